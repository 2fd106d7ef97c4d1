"""The daemon's agent client against the simulator's signed agents over TLS on
127.0.0.1: verified reports, and every refusal (wrong key, stale, unsigned,
wrong certificate, collector failed) counted per node and never an incident;
the collect step on top; the agent repair executor's requests."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.cluster.agent import AgentClient, AgentError
from maintd.cluster.executor import AgentExecutor
from maintd.cluster.model import Node
from maintd.common import signing
from maintd.daemon.config import DaemonConfig
from maintd.daemon.state import Action, MaintState
from maintd.daemon.steps.collect import collect_step
from maintd.sim import tls
from tests.simulators import start_simulator

EVACUATE = {"status": "evacuate", "details": "psu"}


def nodes_of(sim: Any) -> list[Node]:
    return [Node(name=n.name, uuid=n.uuid, group="g", pip=n.pip) for n in sim.cluster.nodes.values()]


class AgentClientTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.sim = start_simulator(self, os.path.abspath(self.mktemp()), mond_port=0)
        self.sim.set_diagnose(self.name(0), EVACUATE)
        self.key = signing.read_key(self.sim.hmac_key_file)

    def name(self, i: int) -> str:
        return sorted(self.sim.cluster.nodes)[i]

    def client(self, **kw: Any) -> AgentClient:
        args: dict[str, Any] = {"key": self.key, "cert": self.sim.agent_cert,
                                "port": self.sim.agent_port, "timeout": 5.0}
        args.update(kw)
        client = AgentClient.create(reactor, **args)
        # the connections it keeps for the next round
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(client.close()))
        return client

    async def gather(self, client: AgentClient) -> dict[str, Any]:
        return await client.gather(nodes_of(self.sim), client.diagnose)

    def test_signed_reports_over_pinned_tls(self) -> defer.Deferred[None]:
        async def t() -> None:
            c = self.client()
            reports = await self.gather(c)
            first = reports[self.name(0)]
            self.assertEqual((first.status, first.raw), (Action.EVACUATE, EVACUATE))
            self.assertTrue(all(not isinstance(r, AgentError) for r in reports.values()))
            self.assertEqual(c.counters.totals()["ok"], len(reports))
            self.assertEqual(c.verified, len(reports))
            self.assertEqual(c.resumed, 0)
            self.assertEqual((c.pool.opened, c.pool.reused, len(c.pool)),
                             (len(reports), 0, len(reports)))
            # a kept connection sends TCP keepalives after a minute idle
            kept, _ = next(iter(c.pool._idle.values()))
            sock = kept.transport.transport.getHandle()  # type: ignore[union-attr]
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 60)
            # next round: over the connections kept from the first, no new
            # TCP or TLS; the reports still verified
            reports = await self.gather(c)
            self.assertEqual(c.counters.totals()["ok"], 2 * len(reports))
            self.assertEqual(c.verified, 2 * len(reports))
            self.assertEqual((c.pool.opened, c.pool.reused, c.pool.retried),
                             (len(reports), len(reports), 0))
            # without kept connections, the new ones resume the TLS sessions
            await c.close()
            self.assertEqual(len(c.pool), 0)
            reports = await self.gather(c)
            self.assertEqual(c.counters.totals()["ok"], 3 * len(reports))
            self.assertEqual(c.resumed, len(reports))
            self.assertEqual(c.pool.opened, 2 * len(reports))
        return defer.Deferred.fromCoroutine(t())

    def test_refused_reports_are_counted_per_node(self) -> defer.Deferred[None]:
        async def t() -> None:
            node = self.name(0)
            cases = {
                "bad_signature": self.client(key=b"wrong key\n"),
                "stale": self.client(wallclock=lambda: time.time() + 400),
                "unsigned-refused": self.client(key=None),
            }
            for what, c in cases.items():
                reports = await self.gather(c)
                err = reports[node]
                self.assertIsInstance(err, AgentError, what)
                self.assertEqual(err.outcome, "bad_signature", what)
                self.assertIn(f"agent on {node}", str(err), what)
                self.assertEqual(c.counters.snapshot()[node]["bad_signature"], 1, what)
                self.assertEqual(c.counters.snapshot()[node]["ok"], 0, what)
            # another certificate than the pinned one: unreachable, nothing read
            other = os.path.abspath(self.mktemp())
            from cryptography.hazmat.primitives.asymmetric import ec

            tls.write_pem(other, ec.generate_private_key(ec.SECP256R1()))
            c = self.client(cert=other)
            err = (await self.gather(c))[node]
            self.assertEqual(err.outcome, "unreachable")
            self.assertEqual(c.verified, 0)
        return defer.Deferred.fromCoroutine(t())

    def test_collector_failed_and_invalid(self) -> defer.Deferred[None]:
        async def t() -> None:
            n0, n1 = self.name(0), self.name(1)
            self.sim.set_diagnose(n0, {"collector_failed": True, "reason": "diag exited 3"})
            self.sim.set_diagnose(n1, {"status": "reboot-now"})
            c = self.client()
            reports = await self.gather(c)
            self.assertEqual(reports[n0].outcome, "collector_failed")
            self.assertIn("diag exited 3", str(reports[n0]))
            self.assertEqual(reports[n1].outcome, "invalid")
            counts = c.counters.snapshot()
            self.assertEqual((counts[n0]["collector_failed"], counts[n1]["invalid"]), (1, 1))
        return defer.Deferred.fromCoroutine(t())

    def test_collect_step_makes_no_incident_from_refused_reports(self) -> defer.Deferred[None]:
        async def t() -> None:
            rapi_cluster = await _cluster(self, self.sim)
            n0, n1 = self.name(0), self.name(1)
            self.sim.set_diagnose(n1, {"collector_failed": True, "reason": "diag hung"})

            class Ctx:
                state = MaintState()
                config = None
                cluster = rapi_cluster
                now = 1000.0
                free_nodes: set[str] = set()
                notes: list[Any] = []
                mond = None
                config = DaemonConfig.for_tests(state_dir=self.mktemp())

                async def commit(self, new: MaintState) -> None:
                    self.state = new

            ctx: Any = Ctx()
            ctx.agent = self.client(key=b"forged\n")
            with capturedLogs() as events:
                await collect_step(ctx)
            self.assertEqual(ctx.state.incidents, (), "a forged report opens nothing")
            text = [e.get("log_format", "") for e in events]
            self.assertTrue(any("bad signature" in str(e.get("outcome", "")) for e in events),
                            text)
            ctx.agent = self.client()
            with capturedLogs() as events:
                await collect_step(ctx)
            self.assertEqual([i.node_name for i in ctx.state.incidents], [n0],
                             "the signed evacuate opens one; collector failed opens none")
            failed = [e for e in events if e.get("outcome") == "collector failed"]
            self.assertEqual(len(failed), 1)
            self.assertIn(n1, str(failed[0]["error"]))
        return defer.Deferred.fromCoroutine(t())


async def _cluster(test: TestCase, sim: Any) -> Any:
    from tests.simulators import client_for

    return await client_for(test, sim).load_cluster()


class AgentExecutorTests(TestCase):
    timeout = 60

    def test_signed_request_through_the_simulated_agent(self) -> defer.Deferred[None]:
        async def t() -> None:
            sim = start_simulator(self, os.path.abspath(self.mktemp()), mond_port=0)
            key = signing.read_key(sim.hmac_key_file)
            node = nodes_of(sim)[0]
            ex = AgentExecutor(reactor, key=key, port=sim.agent_port, cert=sim.agent_cert,
                               timeout=10)
            report = {"status": "live-repair", "command": "fix-bmc"}
            r = await ex.execute(node, "fix-bmc", report, incident="inc-1")
            self.assertEqual((r.ok, r.retry), (True, False))
            self.assertEqual(sim.agents.calls, [(node.name, "fix-bmc", report)])
            again = await ex.execute(node, "fix-bmc", report, incident="inc-1")
            self.assertTrue(again.ok)
            self.assertEqual(len(sim.agents.calls), 1, "recorded result, not run again")
            sim.set_repair("reboot", 2)
            r = await ex.execute(node, "reboot", report, incident="inc-2")
            self.assertFalse(r.ok)
            self.assertIn("exited with status 2", r.reason)
            forged = AgentExecutor(reactor, key=b"forged\n", port=sim.agent_port,
                                   cert=sim.agent_cert, timeout=10)
            r = await forged.execute(node, "fix-bmc", report, incident="inc-3")
            self.assertFalse(r.ok)
            self.assertIn("refused", r.reason)
            self.assertEqual(len(sim.agents.calls), 2, "a forged request runs nothing")
            sim.agents.whitelist = {"fix-bmc"}
            r = await ex.execute(node, "wipe", report, incident="inc-4")
            self.assertIn("not in the simulated whitelist", r.reason)
            self.assertEqual(len(sim.agents.calls), 2)
        return defer.Deferred.fromCoroutine(t())

    def test_unreachable_agent_is_retried(self) -> defer.Deferred[None]:
        async def t() -> None:
            from tests.simulators import free_port

            ex = AgentExecutor(reactor, key=b"k\n", port=free_port(), timeout=2)
            r = await ex.execute(Node(name="n1", uuid="u", group="g", pip="127.0.0.1"), "fix", {},
                                 incident="i")
            self.assertEqual((r.ok, r.retry), (False, True))
        return defer.Deferred.fromCoroutine(t())



class DaemonKeyTests(SynchronousTestCase):
    def test_missing_key_is_a_one_line_startup_error(self) -> None:
        from maintd.daemon.config import DaemonConfig
        from maintd.daemon.tap import makeService

        d = os.path.abspath(self.mktemp())
        missing = os.path.join(d, "no-hmac.key")
        config = DaemonConfig.for_tests(state_dir=os.path.join(d, "state"), hmac_key=missing)
        with self.assertRaises(SystemExit) as cm:
            makeService(config, reactor)
        self.assertEqual(str(cm.exception),
                         f"ganeti-maintd: cannot read HMAC key {missing}: No such file or "
                         "directory; not starting")
        # with --allow-unsigned-reports it starts, without a key
        config = DaemonConfig.for_tests(state_dir=os.path.join(d, "state2"), hmac_key=missing,
                                        allow_unsigned_reports=True)
        daemon = makeService(config, reactor)
        self.assertIsNone(daemon.agent.key)
        self.assertTrue(daemon.agent.allow_unsigned)
        daemon.store.close()
