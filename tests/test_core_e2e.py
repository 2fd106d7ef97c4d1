"""End to end: ``twistd -n ganeti-maintd`` as a subprocess on 127.0.0.1.

The daemon points at an unreachable RAPI (``http://127.0.0.1:1``), so once
the round steps are merged every round fails and backs off: it must keep
serving its state anyway, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile

import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from maintd.daemon.state import Action, Incident, MaintState, RepairStatus
from maintd.daemon.store import StateStore
from maintd.sim.embed import free_port

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
READY = b"Site starting on"
TIMEOUT = 60.0


class Daemon(protocol.ProcessProtocol):
    """Collects output; ``ready`` fires on the listening line, ``ended`` on exit."""

    def __init__(self, expect_ready: bool) -> None:
        self.expect_ready = expect_ready
        self.output = b""
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[BaseException] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and READY in self.output:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if self.expect_ready and not self.ready.called:
            self.ready.errback(AssertionError(f"daemon exited early:\n{self.output.decode()}"))
        self.ended.callback(reason.value)  # the exception, not a failure


def seeded_state() -> MaintState:
    inc = Incident(
        uuid="6b5c1f9e-0000-4000-8000-000000000001",
        node="node-uuid-1",
        node_name="node1.example.com",
        original={"status": "evacuate", "command": None, "details": {"disk": "sda"}},
        action=Action.EVACUATE,
        status=RepairStatus.PENDING,
        jobs=(17,),
        tag="maintd:repairready:6b5c1f9e-0000-4000-8000-000000000001",
        ctime=1.0,
        mtime=2.0,
    )
    return MaintState(incidents=(inc,), jobs=(17,), evacuated=("inst1.example.com",))


class EndToEndTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def get_json(self, url: str) -> tuple[int, str, object]:
        response = await treq.get(url, timeout=10, pool=self.pool)
        body = await response.content()
        ctype = response.headers.getRawHeaders("content-type", [""])[0]
        return response.code, ctype, json.loads(body)

    def spawn(self, args: list[str], cwd: str, expect_ready: bool = False) -> Daemon:
        proto = Daemon(expect_ready)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        reactor.spawnProcess(proto, sys.executable, TWISTD + args, env=env, path=cwd)  # type: ignore[attr-defined]
        return proto

    def test_daemon_serves_state_and_stops_cleanly(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._daemon())

    async def _daemon(self) -> None:
        # short: the control socket lives here too (UNIX paths max 107 bytes)
        state_dir = tempfile.mkdtemp(prefix="maintd-e2e.")
        self.addCleanup(shutil.rmtree, state_dir, True)
        store = StateStore.open(state_dir)
        store.commit(seeded_state())
        store.close()
        port = free_port()
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        key = os.path.join(cwd, "hmac.key")
        with open(key, "w") as f:
            f.write("0" * 40 + "\n")
        proto = self.spawn(
            [
                "-n",
                "--pidfile=",
                "ganeti-maintd",
                "-p",
                str(port),
                "-b",
                "127.0.0.1",
                "--state-dir",
                state_dir,
                "--no-voting",
                "--yes-do-it",
                # no cluster HMAC key (/var/lib/ganeti/hmac.key) nor node
                # agent certificate here
                "--allow-unsigned-reports",
                "--agent-plain-http",
                "--rapi",
                "http://127.0.0.1:1",
                "--round-delay",
                "0.2",
                "--hmac-key",
                key,
                "--agent-plain-http",
            ],
            cwd,
            expect_ready=True,
        )
        self.addCleanup(self._kill, proto)
        await proto.ready.addTimeout(TIMEOUT, reactor)
        base = f"http://127.0.0.1:{port}"
        expected = {
            "/": [1],
            "/1": None,
            "/1/status": [seeded_state().incidents[0].to_json()],
            "/1/jobs": [17],
            "/1/evacuated": ["inst1.example.com"],
        }
        for path, body in expected.items():
            code, ctype, got = await self.get_json(base + path)
            self.assertEqual((code, ctype, got), (200, "application/json", body), path)
        code, ctype, got = await self.get_json(base + "/no/such/thing")
        self.assertEqual((code, ctype), (404, "application/json"))
        response = await treq.post(base + "/1/status", timeout=10, pool=self.pool)
        self.assertEqual(response.code, 405)
        await response.content()
        # rounds go on (and fail against the unreachable RAPI once the steps
        # exist) while the API keeps answering
        # (each failing round spends a few seconds in the RAPI client's retries)
        for _ in range(int(TIMEOUT / 0.1)):
            code, _, last = await self.get_json(base + "/1/last-round")
            assert isinstance(last, dict)
            if last.get("number", 0) >= 2:
                break
            await deferLater(0.1)
        self.assertGreaterEqual(last["number"], 2, proto.output.decode())
        proto.transport.signalProcess(signal.SIGTERM)  # type: ignore[union-attr]
        reason = await proto.ended.addTimeout(TIMEOUT, reactor)
        # twistd shuts down, then re-raises SIGTERM on itself so the exit
        # status says "terminated by SIGTERM" (what init systems expect).
        clean = isinstance(reason, ProcessDone) or (
            isinstance(reason, ProcessTerminated) and reason.signal == signal.SIGTERM
        )
        self.assertTrue(clean, f"{reason!r}\n{proto.output.decode()}")
        self.assertIn(b"Server Shut Down.", proto.output)
        # a failing round (RAPI unreachable) is one clear error line, nothing more
        lines = proto.output.splitlines()
        errors = [line for line in lines if b"#error]" in line or b"#critical]" in line]
        round_failures = [line for line in errors if b"] round " in line and b" failed " in line]
        self.assertEqual(errors, round_failures, proto.output.decode())
        self.assertNotIn(b"Traceback", proto.output, proto.output.decode())
        # the state is intact and the lock released
        after = StateStore.open(state_dir)
        self.addCleanup(after.close)
        self.assertEqual(after.state.incidents, seeded_state().incidents)
        self.assertEqual(after.state.evacuated, ("inst1.example.com",))

    def _kill(self, proto: Daemon) -> defer.Deferred[object] | None:
        if proto.ended.called:
            return None
        proto.transport.signalProcess("KILL")  # type: ignore[union-attr]
        return proto.ended

    def test_plugin_is_listed_from_another_directory(self) -> defer.Deferred[None]:
        async def check() -> None:
            cwd = os.path.abspath(self.mktemp())
            os.makedirs(cwd)
            proto = self.spawn(["--help"], cwd)
            reason = await proto.ended.addTimeout(TIMEOUT, reactor)
            self.assertIsInstance(reason, ProcessDone, proto.output.decode())
            self.assertIn(b"ganeti-maintd", proto.output)

        return defer.Deferred.fromCoroutine(check())

    def test_no_voting_alone_is_refused(self) -> defer.Deferred[None]:
        async def check() -> None:
            cwd = os.path.abspath(self.mktemp())
            os.makedirs(cwd)
            proto = self.spawn(["-n", "--pidfile=", "ganeti-maintd", "--no-voting"], cwd)
            reason = await proto.ended.addTimeout(TIMEOUT, reactor)
            # a usage error: one line (not twistd's page of usage) and exit 2
            self.assertEqual(getattr(reason, "exitCode", None), 2)
            self.assertIn(b"--yes-do-it", proto.output)
            self.assertEqual(proto.output.count(b"\n"), 1, proto.output)

        return defer.Deferred.fromCoroutine(check())


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
