"""MondClient: validation of self-diagnose reports, timeouts, bounded concurrency."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from maintd.cluster.model import Node
from maintd.cluster.mond import (
    MAX_BODY,
    MAX_REPORT,
    DiagnoseReport,
    MondClient,
    MondError,
    validate_diagnose,
)
from maintd.daemon.state import Action


def node(name: str, pip: str) -> Node:
    return Node(name=name, uuid=f"uuid-{name}", group="default", pip=pip)


def wrap(data: Any) -> dict[str, Any]:
    return {"name": "diagnose", "version": "B", "category": "node", "kind": 0, "data": data}


class Monds(resource.Resource):
    """One fake mond per host: answers[host] is bytes, an int (HTTP code) or None (hang)."""

    isLeaf = True

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__()
        self.answers = answers
        self.inflight = 0
        self.max_inflight = 0
        self.pending: list[server.Request] = []
        self.paths: list[bytes] = []

    def render_GET(self, request: server.Request) -> Any:
        host = request.getRequestHostname().decode()
        self.paths.append(request.path)
        answer = self.answers[host]
        if answer is None:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.pending.append(request)

            def gone(_: Any) -> None:
                self.inflight -= 1

            request.notifyFinish().addBoth(gone)
            return server.NOT_DONE_YET
        if isinstance(answer, int):
            request.setResponseCode(answer)
            return b"Unable to produce a report for the requested resource"
        return answer


def ok_body(status: str = "Ok", **extra: Any) -> bytes:
    return json.dumps(wrap({"status": status, "details": [], **extra})).encode()


class ValidateTests(SynchronousTestCase):
    def test_statuses(self) -> None:
        for wire, action in [
            ("Ok", Action.OK),
            ("live-repair", Action.LIVE_REPAIR),
            ("evacuate", Action.EVACUATE),
            ("evacuate-failover", Action.EVACUATE_FAILOVER),
        ]:
            r = validate_diagnose("n1", wrap({"status": wire, "command": "fix-disk", "details": 1}))
            self.assertEqual((r.status, r.command, r.details), (action, "fix-disk", 1))
            self.assertEqual(r.raw, {"status": wire, "command": "fix-disk", "details": 1})

    def test_rejects(self) -> None:
        bad: list[tuple[Any, str]] = [
            ([], "not a JSON object"),
            ({"data": 3}, "no 'data' object"),
            (wrap({"details": []}), "status None"),
            (wrap({"status": "reboot"}), "unknown report status 'reboot'"),
            (wrap({"status": 1}), "is not a string"),
            (wrap({"status": "live-repair", "command": ["rm"]}), "is not a string"),
            (wrap({"status": "live-repair", "command": "/bin/rm"}), "not a plain command"),
            (wrap({"status": "live-repair", "command": "../../x"}), "not a plain command"),
            (wrap({"status": "live-repair", "command": "-rf"}), "not a plain command"),
            (wrap({"status": "live-repair", "command": "a b"}), "not a plain command"),
            (wrap({"status": "live-repair", "command": "fix..x"}), "not a plain command"),
            (wrap({"status": "evacuate", "details": "x" * MAX_REPORT}), "more than"),
        ]
        for document, needle in bad:
            with self.assertRaises(MondError) as cm:
                validate_diagnose("node7", document)
            self.assertIn("node7", str(cm.exception))
            self.assertIn(needle, str(cm.exception))

    def test_nan_and_deep_nesting_are_rejected(self) -> None:
        deep: Any = []
        for _ in range(100_000):
            deep = [deep]
        for data, needle in (
            ({"status": "evacuate", "details": float("nan")}, "NaN"),
            ({"status": "evacuate", "details": {"load": float("inf")}}, "NaN or Infinity"),
            ({"status": "evacuate", "details": deep}, "nested deeper"),
        ):
            with self.assertRaises(MondError) as cm:
                validate_diagnose("node7", wrap(data))
            self.assertIn("node7", str(cm.exception))
            self.assertIn(needle, str(cm.exception))

    def test_empty_command_is_none(self) -> None:
        r = validate_diagnose("n", wrap({"status": "live-repair", "command": ""}))
        self.assertIsNone(r.command)


class StubbedClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def client(self, monds: Monds, **kw: Any) -> MondClient:
        return MondClient(self.clock, http=StubTreq(monds), timeout=10, **kw)

    def result(self, coro: Any) -> Any:
        return self.successResultOf(defer.Deferred.fromCoroutine(coro))

    def test_diagnose_ok_and_path(self) -> None:
        monds = Monds({"127.0.0.2": ok_body("evacuate")})
        c = self.client(monds, diagnose_path="/1/report/node/diag2", port=1999)
        r = self.result(c.diagnose(node("n1", "127.0.0.2")))
        self.assertIsInstance(r, DiagnoseReport)
        self.assertEqual(r.status, Action.EVACUATE)
        self.assertEqual(monds.paths, [b"/1/report/node/diag2"])
        self.assertEqual(c.url(node("n1", "127.0.0.2"), "/x"), "http://127.0.0.2:1999/x")

    def test_errors_name_the_node(self) -> None:
        monds = Monds({"127.0.0.2": b"{not json", "127.0.0.3": 404, "127.0.0.4": ok_body("zap")})
        c = self.client(monds)
        nodes = [node("bad-json", "127.0.0.2"), node("no-report", "127.0.0.3"),
                 node("bad-status", "127.0.0.4"), node("no-ip", "")]
        out = self.result(c.gather(nodes, c.diagnose))
        self.assertEqual(set(out), {"bad-json", "no-report", "bad-status", "no-ip"})
        for name, err in out.items():
            self.assertIsInstance(err, MondError)
            self.assertIn(name, str(err))
        self.assertIn("malformed JSON", str(out["bad-json"]))
        self.assertIn("HTTP 404", str(out["no-report"]))
        self.assertIn("no primary IP", str(out["no-ip"]))

    def test_nan_and_deeply_nested_answers_are_one_clear_error(self) -> None:
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        nan = b'{"data": {"status": "evacuate", "details": {"load": NaN}}}'
        deep = b'{"data": {"status": "evacuate", "details": ' + b"[" * 200_000 + b"]" * 200_000
        monds = Monds({"127.0.0.2": nan, "127.0.0.3": deep + b"}}"})
        c = self.client(monds)
        out = self.result(c.gather([node("nan", "127.0.0.2"), node("deep", "127.0.0.3")],
                                   c.diagnose))
        self.assertIn("NaN is not JSON", str(out["nan"]))
        self.assertIn("nested too deeply", str(out["deep"]))
        for name, err in out.items():
            self.assertIsInstance(err, MondError)
            self.assertIn(name, str(err))
        # no "unexpected error" traceback (it was logged at critical every round)
        self.assertEqual([e for e in logged if "log_failure" in e], [])

    def test_dead_nodes_cost_one_timeout(self) -> None:
        answers: dict[str, Any] = {}
        nodes = []
        for i in range(20):
            ip = f"127.0.1.{i + 1}"
            answers[ip] = None if i % 5 == 0 else ok_body()  # 4 dead nodes
            nodes.append(node(f"n{i}", ip))
        monds = Monds(answers)
        c = self.client(monds, parallel=6)
        d = defer.Deferred.fromCoroutine(c.gather(nodes, c.diagnose))
        self.assertNoResult(d)
        self.assertEqual(monds.inflight, 4)
        self.clock.advance(10)
        out = self.successResultOf(d)
        dead = {n for n, r in out.items() if isinstance(r, MondError)}
        self.assertEqual(dead, {"n0", "n5", "n10", "n15"})
        for n in dead:
            self.assertIn("within 10s", str(out[n]))
        self.assertEqual(sum(isinstance(r, DiagnoseReport) for r in out.values()), 16)

    def test_parallel_bound(self) -> None:
        # 20 silent nodes, parallel 3: 3 active at once; a stalled request
        # (no answer after 1 s) frees its slot; at most 4 x 3 outstanding.
        answers = {f"127.0.2.{i + 1}": None for i in range(20)}
        monds = Monds(answers)
        c = self.client(monds, parallel=3)
        self.assertEqual(c.stall, 1.0)
        nodes = [node(f"n{i}", f"127.0.2.{i + 1}") for i in range(20)]
        inflight = [0, 0]

        async def counted(n: Node) -> DiagnoseReport:
            inflight[0] += 1
            inflight[1] = max(inflight)
            try:
                return await c.diagnose(n)
            finally:
                inflight[0] -= 1

        d = defer.Deferred.fromCoroutine(c.gather(nodes, counted))
        seen = [inflight[0]]
        for _ in range(5):
            self.clock.advance(1)
            seen.append(inflight[0])
        self.assertEqual(seen, [3, 6, 9, 12, 12, 12])
        for _ in range(40):
            self.clock.advance(1)
            self.assertLessEqual(inflight[0], 12)
        out = self.successResultOf(d)
        self.assertEqual(inflight[1], 12)
        self.assertEqual(len(out), 20)
        self.assertTrue(all(isinstance(r, MondError) for r in out.values()))

    def test_silent_nodes_free_their_slots(self) -> None:
        answers: dict[str, Any] = {f"127.0.4.{i}": None for i in range(1, 5)}
        answers.update({f"127.0.4.{i}": ok_body() for i in range(5, 11)})
        c = self.client(Monds(answers), parallel=2)
        nodes = [node(f"n{i}", f"127.0.4.{i}") for i in range(1, 11)]
        done: list[str] = []

        async def noting(n: Node) -> DiagnoseReport:
            r = await c.diagnose(n)
            done.append(n.name)
            return r

        d = defer.Deferred.fromCoroutine(c.gather(nodes, noting))
        self.clock.advance(1)
        self.clock.advance(1)
        # every answering node answered long before the silent ones time out
        self.assertEqual(sorted(done), sorted(f"n{i}" for i in range(5, 11)))
        self.assertNoResult(d)
        self.clock.advance(8)  # n1, n2 (asked at 0 s) time out
        self.assertNoResult(d)
        self.clock.advance(1)  # n3, n4 (asked when n1, n2 stalled at 1 s) time out
        out = self.successResultOf(d)
        self.assertEqual(sorted(n for n, r in out.items() if isinstance(r, MondError)),
                         ["n1", "n2", "n3", "n4"])

    def test_silent_nodes_are_asked_first_next_time(self) -> None:
        answers: dict[str, Any] = {f"127.0.3.{i}": ok_body() for i in range(1, 7)}
        answers["127.0.3.5"] = None
        monds = Monds(answers)
        c = self.client(monds, parallel=2)
        nodes = [node(f"n{i}", f"127.0.3.{i}") for i in range(1, 7)]
        order: list[str] = []

        async def noting(n: Node) -> DiagnoseReport:
            order.append(n.name)
            return await c.diagnose(n)

        d = defer.Deferred.fromCoroutine(c.gather(nodes, noting))
        self.clock.advance(10)
        self.assertIsInstance(self.successResultOf(d)["n5"], MondError)
        self.assertEqual(order, ["n1", "n2", "n3", "n4", "n5", "n6"])
        order.clear()
        d = defer.Deferred.fromCoroutine(c.gather(nodes, noting))
        self.clock.advance(10)
        self.successResultOf(d)
        self.assertEqual(order, ["n5", "n1", "n2", "n3", "n4", "n6"])

    def test_report(self) -> None:
        body = json.dumps({"name": "cpu-avg-load", "data": {"cpu_total": 1.5}}).encode()
        monds = Monds({"127.0.0.9": body})
        c = self.client(monds)
        r = self.result(c.report(node("n", "127.0.0.9"), "default", "cpu-avg-load"))
        self.assertEqual(r["data"]["cpu_total"], 1.5)
        self.assertEqual(monds.paths, [b"/1/report/default/cpu-avg-load"])
        err = self.failureResultOf(
            defer.Deferred.fromCoroutine(c.report(node("n", "127.0.0.9"), "..", "x")), MondError
        )
        self.assertIn("bad report name", str(err.value))


class Silent(protocol.Protocol):
    """Accepts the connection, reads the request, never answers."""


class RealSocketTests(TestCase):
    """Against real listening sockets on 127.0.0.x."""

    def listen(self, factory: protocol.Factory, host: str, port: int = 0) -> int:
        p = reactor.listenTCP(port, factory, interface=host)  # type: ignore[attr-defined]
        self.addCleanup(p.stopListening)
        return int(p.getHost().port)

    async def _scenario(self) -> None:
        site = server.Site(Monds({"127.0.0.1": ok_body("live-repair", command="fix-it")}))
        port = self.listen(site, "127.0.0.1")
        silent = protocol.Factory.forProtocol(Silent)
        try:
            self.listen(silent, "127.0.0.2", port)
        except Exception as e:  # port taken on the second address: rare
            raise self.skipTest(f"port {port} busy on 127.0.0.2: {e}") from None
        for host, answer in (("127.0.0.3", 404), ("127.0.0.4", b"[" * (MAX_BODY + 10))):
            try:
                self.listen(server.Site(Monds({host: answer})), host, port)
            except Exception as e:
                raise self.skipTest(f"port {port} busy on {host}: {e}") from None
        c = MondClient(reactor, port=port, timeout=0.5, parallel=4)
        nodes = [node("alive", "127.0.0.1"), node("hung", "127.0.0.2"), node("hung2", "127.0.0.2"),
                 node("noreport", "127.0.0.3"), node("huge", "127.0.0.4"),
                 node("refused", "127.0.0.5")]
        out = await c.gather(nodes, c.diagnose)
        self.assertIn("HTTP 404", str(out["noreport"]))
        self.assertIn("larger than", str(out["huge"]))
        self.assertIn("cannot reach", str(out["refused"]))
        alive = out["alive"]
        assert isinstance(alive, DiagnoseReport)
        self.assertEqual((alive.status, alive.command), (Action.LIVE_REPAIR, "fix-it"))
        for name in ("hung", "hung2"):
            self.assertIsInstance(out[name], MondError)
            self.assertIn(name, str(out[name]))
        await c.close()

    def test_real_sockets(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._scenario())
