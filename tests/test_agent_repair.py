"""The agent's POST /1/repair: every refusal (unsigned, stale, replayed, wrong
node, not whitelisted), one repair at a time, one run per incident (also
after a restart), through the real HTTP resource over 127.0.0.1."""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from maintd.agent import runner, whitelist
from maintd.agent.http import AgentResource, QuietSite
from maintd.agent.repair import RepairService, RepairState
from maintd.common import signing

KEY = b"c0ffee" * 6 + b"abcd\n"
NODE = "node3.example.com"
UID = os.geteuid()


class Agent:
    """A repair service behind the real resource on 127.0.0.1 (plain HTTP)."""

    def __init__(self, test: TestCase, state_dir: str, repair_dir: str,
                 clock: Any = time.time) -> None:
        self.state_dir = state_dir
        self.repair_dir = repair_dir
        self.gate: defer.Deferred[None] | None = None

        async def execute(path: str, stdin: bytes) -> runner.RunResult:
            if self.gate is not None:
                await self.gate
            return await runner.run(reactor, path, stdin=stdin, timeout=10, max_stdout=0,
                                    max_tail=200)

        self.service = RepairService(
            node=NODE, key=KEY, state=RepairState(state_dir),
            resolve=lambda name: whitelist.resolve(repair_dir, name, uid=UID),
            execute=execute, timeout=10, wallclock=clock)
        res = AgentResource(key=KEY, data=lambda: ({"status": "Ok"}, clock()),
                            repairs=self.service, wallclock=clock)
        self.port = reactor.listenTCP(0, QuietSite(res), interface="127.0.0.1")
        test.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/1/repair"

    async def post(self, body: bytes) -> tuple[int, dict[str, Any]]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.post(self.url, data=body, pool=pool)
        data = await treq.content(response)
        payload, _ = signing.verify(json.loads(data), KEY, time.time(), source="answer")
        return response.code, payload


def request(**over: Any) -> dict[str, Any]:
    msg = {"node": NODE, "incident": str(uuid.uuid4()), "command": "fix",
           "report": {"status": "live-repair", "command": "fix"}, "nonce": uuid.uuid4().hex,
           "time": time.time()}
    msg.update(over)
    return msg


def signed(msg: dict[str, Any], key: bytes = KEY, at: float | None = None) -> bytes:
    return signing.dumps(msg, key, time.time() if at is None else at)


class RepairRequestTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.rdir = os.path.join(base, "repair")
        os.makedirs(self.rdir)
        os.chmod(self.rdir, 0o755)
        self.log = os.path.join(base, "ran")
        path = os.path.join(self.rdir, "fix")
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\ncat >> {self.log}; echo >> {self.log}; echo repaired; "
                    "exit ${EXIT:-0}\n")
        os.chmod(path, 0o755)
        self.state_dir = os.path.join(base, "state")
        self.agent = Agent(self, self.state_dir, self.rdir)

    def runs(self) -> list[Any]:
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def test_runs_once_with_report_on_stdin(self) -> defer.Deferred[None]:
        async def t() -> None:
            msg = request()
            code, answer = await self.agent.post(signed(msg))
            self.assertEqual(code, 200)
            self.assertEqual((answer["ok"], answer["exit_status"], answer["incident"],
                              answer["recorded"]), (True, 0, msg["incident"], False))
            self.assertEqual(answer["output"], "repaired\n")
            self.assertEqual(self.runs(), [msg["report"]])
            # the daemon asks again for the same incident (new nonce): recorded result
            again = dict(msg, nonce=uuid.uuid4().hex)
            code, answer2 = await self.agent.post(signed(again))
            self.assertEqual((code, answer2["recorded"], answer2["ok"]), (200, True, True))
            self.assertEqual(len(self.runs()), 1, "not run again")
            # ... also after a restart of the agent
            self.agent = Agent(self, self.state_dir, self.rdir)
            code, answer3 = await self.agent.post(signed(dict(msg, nonce=uuid.uuid4().hex)))
            self.assertEqual((code, answer3["recorded"], answer3["output"]),
                             (200, True, "repaired\n"))
            self.assertEqual(len(self.runs()), 1, "not run again after a restart")
        return defer.Deferred.fromCoroutine(t())

    def refused(self, body: bytes, code: int, why: str) -> defer.Deferred[None]:
        """``body`` is answered ``code`` with ``why`` in the error; nothing runs;
        the agent keeps serving (a good request afterwards runs)."""
        async def t() -> None:
            got, answer = await self.agent.post(body)
            self.assertEqual(got, code, answer)
            self.assertIn(why, answer["error"])
            self.assertEqual((self.runs(), self.agent.service.runs), ([], 0), "nothing run")
            got, answer = await self.agent.post(signed(request()))
            self.assertEqual((got, answer["ok"]), (200, True), "still serving")
        return defer.Deferred.fromCoroutine(t())

    def test_unsigned_refused(self) -> defer.Deferred[None]:
        return self.refused(json.dumps(request()).encode(), 403, "not signed")

    def test_wrong_key_refused(self) -> defer.Deferred[None]:
        return self.refused(signed(request(), key=b"other\n"), 403, "does not match")

    def test_stale_signature_refused(self) -> defer.Deferred[None]:
        return self.refused(signed(request(), at=time.time() - 600), 403, "window")

    def test_stale_time_refused(self) -> defer.Deferred[None]:
        return self.refused(signed(request(time=time.time() - 900)), 403, "window")

    def test_other_node_refused(self) -> defer.Deferred[None]:
        return self.refused(signed(request(node="node1.example.com")), 403,
                            "it is for node 'node1.example.com'")

    def test_not_whitelisted_refused(self) -> defer.Deferred[None]:
        return self.refused(signed(request(command="rm-rf")), 403, "rm-rf")

    def test_path_as_command_refused(self) -> defer.Deferred[None]:
        return self.refused(signed(request(command="../../bin/sh")), 403,
                            "is not [A-Za-z0-9_-]+")

    def test_directory_as_command_refused(self) -> defer.Deferred[None]:
        os.makedirs(os.path.join(self.rdir, "sub"))
        return self.refused(signed(request(command="sub")), 403, "not a regular file")

    def test_garbage_refused(self) -> defer.Deferred[None]:
        return self.refused(b"\xff{{", 400, "not UTF-8")

    def test_missing_member_refused(self) -> defer.Deferred[None]:
        return self.refused(signed({"node": NODE}), 400, "exactly the members")

    def test_huge_refused(self) -> defer.Deferred[None]:
        return self.refused(b"x" * 100_000, 413, "larger than")

    def test_replay_is_refused_even_after_restart(self) -> defer.Deferred[None]:
        async def t() -> None:
            body = signed(request())
            code, _ = await self.agent.post(body)
            self.assertEqual(code, 200)
            code, answer = await self.agent.post(body)
            self.assertEqual(code, 403)
            self.assertIn("replayed", answer["error"])
            self.agent = Agent(self, self.state_dir, self.rdir)
            code, answer = await self.agent.post(body)
            self.assertEqual((code, "replayed" in answer["error"]), (403, True))
            self.assertEqual(len(self.runs()), 1)
        return defer.Deferred.fromCoroutine(t())

    def test_one_at_a_time(self) -> defer.Deferred[None]:
        async def t() -> None:
            gate: defer.Deferred[None] = defer.Deferred()
            self.agent.gate = gate
            first = request()
            d1 = defer.Deferred.fromCoroutine(self.agent.post(signed(first)))
            while self.agent.service.running is None:
                await deferLater(0.01)
            code, answer = await self.agent.post(signed(request()))
            self.assertEqual(code, 409)
            self.assertIn(f"the repair of incident {first['incident']} is running",
                          answer["error"])
            code, answer = await self.agent.post(signed(dict(first, nonce=uuid.uuid4().hex)))
            self.assertEqual(code, 409, "the same incident, still running")
            gate.callback(None)
            code, answer = await d1
            self.assertEqual((code, answer["ok"]), (200, True))
            self.assertEqual(len(self.runs()), 1)
        return defer.Deferred.fromCoroutine(t())

    def test_interrupted_repair_is_not_run_again(self) -> defer.Deferred[None]:
        async def t() -> None:
            msg = request()
            # the agent died while the command ran: only the "running" mark is left
            RepairState(self.state_dir).record(msg["incident"], {"state": "running"})
            code, answer = await self.agent.post(signed(msg))
            self.assertEqual((code, answer["ok"]), (200, False))
            self.assertIn("stopped while the repair ran", answer["reason"])
            self.assertEqual(self.runs(), [])
        return defer.Deferred.fromCoroutine(t())


def deferLater(seconds: float) -> defer.Deferred[None]:  # noqa: N802
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
