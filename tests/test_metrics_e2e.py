"""End to end: the real daemon (makeService) against the embedded simulator,
scraped over a real socket on 127.0.0.1; and bad requests to /metrics and
/ui (odd paths, methods, huge headers) that get a 4xx and leave the rounds
alone."""

from __future__ import annotations

from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from maintd.daemon.state import RepairStatus
from tests.test_round_e2e import EVACUATE, Daemon, drbd, scenario


class _Raw(protocol.Protocol):
    """Sends bytes, collects the answer until the server closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.answer = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.answer)


async def raw_http(port: int, data: bytes) -> bytes:
    """What the daemon answers to ``data`` sent as is (bounded: 20 s)."""
    proto = _Raw(data)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoints.connectProtocol(endpoint, proto)
    proto.done.addTimeout(20, reactor)
    return await proto.done


def status_of(answer: bytes) -> int:
    line = answer.split(b"\r\n", 1)[0].split(b" ")
    assert line[0].startswith(b"HTTP/1."), answer[:200]
    return int(line[1])


class MetricsEndToEndTests(TestCase):
    timeout = 180

    async def daemon(self, spec: dict[str, Any]) -> Daemon:
        d = Daemon(self, spec)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
        await d.start()
        return d

    async def get(self, d: Daemon, path: str) -> tuple[int, Any, bytes]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        r = await treq.get(f"http://127.0.0.1:{d.http_port}{path}", pool=pool, timeout=10)
        return r.code, r.headers, await r.content()

    async def scrape(self, d: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, _, body = await self.get(d, "/metrics")
        self.assertEqual(code, 200)
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[s.name, tuple(sorted(s.labels.items()))] = s.value
        return out

    @staticmethod
    def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    def test_an_evacuation_as_the_metrics_show_it(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._evacuation())

    async def _evacuation(self) -> None:
        spec = scenario([drbd("a1", "n2", "n3"), drbd("b1", "n5", "n2")], {"n2": EVACUATE})
        d = await self.daemon(spec)
        d.sim.set_mond("n6", "garbage")
        await d.rounds_until(lambda: d.incidents("n2")[0].status == RepairStatus.COMPLETED)
        s = await self.scrape(d)
        v = self.value
        self.assertEqual(v(s, "ganeti_maintd_incidents", status="completed", action="evacuate"), 1)
        self.assertEqual(v(s, "ganeti_maintd_nodes_evacuating"), 0)
        # one report per node and round (from the simulated node agents, or
        # their monds without agents): n1..n5 ok, n6's garbage invalid
        rounds = d.number
        source = "mond" if d.daemon.agent is None else "agent"
        self.assertEqual(v(s, "ganeti_maintd_reports_total", source=source, node="n1",
                           outcome="ok"), rounds)
        self.assertGreaterEqual(v(s, "ganeti_maintd_reports_total", source=source, node="n6",
                                  outcome="invalid") or 0, rounds - 1)
        # the evacuation's jobs, by kind: drain, migrate, replace the secondary of b1, the tag
        j = "ganeti_maintd_jobs_submitted_total"
        self.assertEqual(v(s, j, kind="set-drained"), 1)
        self.assertEqual(v(s, j, kind="migrate"), 1)
        self.assertEqual(v(s, j, kind="replace-disks"), 2)  # b1, then a1 (secondary on n2)
        self.assertEqual(v(s, j, kind="add-tags"), 1)
        self.assertEqual(sum(x for (name, _), x in s.items() if name == j), len(d.jobs()))
        self.assertEqual(v(s, "ganeti_maintd_rounds_total", result="ok"), rounds)
        self.assertEqual(v(s, "ganeti_maintd_round_duration_seconds_count"), rounds)
        for step in ("jobs", "snapshot", "cleanup", "collect", "handle"):
            self.assertEqual(v(s, "ganeti_maintd_step_duration_seconds_count", step=step), rounds)
        self.assertGreater(v(s, "ganeti_maintd_store_write_duration_seconds_count") or 0, rounds)
        self.assertEqual(v(s, "ganeti_maintd_master"), 1)
        # the page shows it too
        code, _, page = await self.get(d, "/ui")
        self.assertEqual(code, 200)
        self.assertIn(b'data-status="completed"', page)

    def test_failed_jobs_and_unreachable_nodes(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._failures())

    async def _failures(self) -> None:
        spec = scenario([drbd("a1", "n2", "n3")], {})
        d = await self.daemon(spec)
        d.sim.set_mond("n4", "down")
        d.sim.fail_next_jobs(1)
        d.sim.set_diagnose("n2", EVACUATE)
        await d.round()  # the drain job is submitted, and fails
        await d.wait_jobs_done()
        await d.round()  # the jobs step sees it failed
        s = await self.scrape(d)
        self.assertEqual(self.value(s, "ganeti_maintd_jobs_failed_total", kind="set-drained",
                                    status="error"), 1)
        self.assertEqual(self.value(s, "ganeti_maintd_incidents", status="failed",
                                    action="evacuate"), 1)
        source = "mond" if d.daemon.agent is None else "agent"
        self.assertGreaterEqual(self.value(s, "ganeti_maintd_reports_total", source=source,
                                           node="n4", outcome="unreachable") or 0, 2,
                                [(k, v) for k, v in s.items() if "n4" in str(k)])

    def test_bad_requests_get_4xx_and_rounds_go_on(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._bad_requests())

    async def _bad_requests(self) -> None:
        d = await self.daemon(scenario([drbd("a1", "n2", "n3")], {}))
        port = d.http_port
        big = b"x" * 200_000
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
        cases = {
            "huge header": b"GET /ui HTTP/1.1\r\nHost: a\r\nX-Big: " + big + b"\r\n\r\n",
            "many headers": b"GET /metrics HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n",
            "huge path": b"GET /ui/" + big + b" HTTP/1.1\r\nHost: a\r\n\r\n",
            "odd method": b"BREW /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "post": b"POST /ui HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                    b"Connection: close\r\n\r\nabc",
            "odd path": b"GET /ui/../../etc/passwd HTTP/1.1\r\nHost: a\r\n"
                        b"Connection: close\r\n\r\n",
            "nul path": b"GET /metrics%00 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            "no version": b"GET /ui\r\n\r\n",
        }
        for what, data in cases.items():
            answer = await raw_http(port, data)
            self.assertTrue(answer, f"{what}: no answer")
            code = status_of(answer)
            self.assertTrue(400 <= code < 500, f"{what}: {answer[:300]!r}")
        # the daemon is unharmed: a round runs, the pages still answer
        before = d.state.last_round["number"]
        await d.round()
        self.assertEqual(d.state.last_round["result"], "ok")
        self.assertEqual(d.state.last_round["number"], before + 1)
        for path in ("/ui", "/metrics", "/1/status"):
            code, _, _ = await self.get(d, path)
            self.assertEqual(code, 200, path)


class AgentReportMetricsTests(TestCase):
    """The simulator's signed node agents over TLS on 127.0.0.1, asked by the
    collect step through the real agent client: every node's outcome is
    counted with source="agent" (a forged key: bad_signature)."""

    timeout = 60

    def test_agent_outcomes_per_node(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._agents())

    async def _agents(self) -> None:
        import os

        from maintd.cluster.agent import AgentClient
        from maintd.common import signing
        from maintd.daemon.config import DaemonConfig
        from maintd.daemon.metrics import DaemonMetrics
        from maintd.daemon.round import RoundContext
        from maintd.daemon.state import MaintState
        from maintd.daemon.steps.collect import collect_step
        from tests.simulators import client_for, start_simulator

        sim = start_simulator(self, os.path.abspath(self.mktemp()), mond_port=0)
        names = sorted(sim.cluster.nodes)
        sim.set_diagnose(names[1], {"collector_failed": True, "reason": "diag exited 3"})
        cluster = await client_for(self, sim).load_cluster()
        metrics = DaemonMetrics(MaintState)

        async def collect(key: bytes) -> None:
            agent = AgentClient.create(reactor, key=key, cert=sim.agent_cert,
                                       port=sim.agent_port, timeout=5.0)
            ctx = RoundContext(number=1, now=0.0, reactor=reactor, state=MaintState(),
                               config=DaemonConfig.for_tests(state_dir=self.mktemp()),
                               cluster=cluster, events=metrics)
            ctx.agent = agent
            await collect_step(ctx)
            await agent.close()

        await collect(signing.read_key(sim.hmac_key_file))
        await collect(b"forged key\n")
        body, _ = metrics.exposition()
        samples = {(s.labels.get("node"), s.labels.get("outcome")): s.value
                   for f in text_string_to_metric_families(body.decode())
                   if f.name == "ganeti_maintd_reports"
                   for s in f.samples if s.labels.get("source") == "agent"}
        self.assertEqual(samples[names[0], "ok"], 1)
        self.assertEqual(samples[names[0], "bad_signature"], 1)
        self.assertEqual(samples[names[1], "collector_failed"], 1)
        self.assertEqual(sum(v for (_, o), v in samples.items() if o == "ok"), len(names) - 1)
