"""Service composition (maintd.daemon.tap) with a fake reactor, and the log filter."""

from __future__ import annotations

import os
import sys
import types
from typing import Any
from unittest import mock

from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, LogPublisher, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from maintd.daemon import tap
from maintd.daemon.config import DaemonConfig
from maintd.daemon.logsetup import LogLevelService
from maintd.daemon.options import Options
from maintd.daemon.round import RoundContext
from maintd.daemon.state import MaintState
from maintd.daemon.store import StateStore


class EndpointTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        ep = endpoints.serverFromString(
            MemoryReactorClock(), tap.endpoint_description(1816, "0.0.0.0")
        )
        self.assertIsInstance(ep, endpoints.TCP4ServerEndpoint)

    def test_ipv6_colons_are_escaped(self) -> None:
        reactor = MemoryReactorClock()
        desc = tap.endpoint_description(1816, "fe80::1")
        ep = endpoints.serverFromString(reactor, desc)
        self.assertIsInstance(ep, endpoints.TCP6ServerEndpoint)
        ep.listen(object())  # type: ignore[arg-type]
        port, _, _, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (1816, "fe80::1"))


def isolate_from_other_parts(test: SynchronousTestCase) -> None:
    """Stand-ins for the parts other engineers write (steps, RAPI, mond), so
    these tests see only the composition, whatever has been merged."""
    steps = types.ModuleType("maintd.daemon.steps")
    steps.default_steps = lambda config: []  # type: ignore[attr-defined]
    absent = {"maintd.cluster.rapi.client": None, "maintd.cluster.mond": None}  # None: ImportError
    patcher = mock.patch.dict(sys.modules, {"maintd.daemon.steps": steps, **absent})
    patcher.start()
    test.addCleanup(patcher.stop)


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.reactor = MemoryReactorClock()
        isolate_from_other_parts(self)

    def make(self, **overrides: Any) -> tap.MaintDaemon:
        config = DaemonConfig.for_tests(state_dir=self.dir, port=18160, **overrides)
        return tap.makeService(config, reactor=self.reactor)

    def run_service(self, svc: tap.MaintDaemon) -> None:
        svc.startService()
        self.addCleanup(lambda: svc.running and svc.stopService())

    def test_listens_where_configured_and_runs_rounds(self) -> None:
        svc = self.make(round_delay=30)
        self.run_service(svc)
        port, factory, _, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (18160, "127.0.0.1"))
        self.reactor.advance(0)
        self.assertEqual(svc.store.state.last_round["number"], 1)
        self.reactor.advance(30)
        self.assertEqual(svc.store.state.last_round["number"], 2)

    def test_steps_come_from_maintd_steps(self) -> None:
        seen: list[int] = []

        async def step(ctx: RoundContext) -> None:
            seen.append(ctx.number)
            await ctx.commit(ctx.state.__class__(evacuated=("inst9",)))

        fake = types.ModuleType("maintd.daemon.steps")
        fake.default_steps = lambda config: [step]  # type: ignore[attr-defined]
        with mock.patch.dict(sys.modules, {"maintd.daemon.steps": fake}):
            svc = self.make()
        self.run_service(svc)
        self.reactor.advance(0)
        self.assertEqual(seen, [1])
        # the API shows what the step committed
        self.assertIn(b"inst9", svc.api.body("evacuated"))

    def test_stop_releases_the_state_dir(self) -> None:
        svc = self.make()
        self.run_service(svc)
        self.reactor.advance(0)
        self.successResultOf(svc.stopService())
        store = StateStore.open(self.dir)  # the lock is free again
        self.addCleanup(store.close)
        self.assertEqual(store.state.last_round["number"], 1)

    def test_corrupt_state_refuses_to_start(self) -> None:
        os.makedirs(self.dir)
        path = os.path.join(self.dir, "state.json")
        with open(path, "w") as f:
            f.write("{garbage")
        e = self.assertRaises(SystemExit, self.make)
        self.assertIn(path, str(e))
        self.assertIn("not starting", str(e))

    def test_simulate_uses_the_embedded_simulator(self) -> None:
        made: list[Any] = []

        from twisted.application import service

        class FakeSim(service.Service):
            def __init__(self, reactor: Any, workdir: str, **kw: Any) -> None:
                self.workdir = workdir
                self.rapi_url = "https://127.0.0.1:45080"
                self.rapi_user = "sim"
                self.rapi_password_file = os.path.join(workdir, "pw")
                self.rapi_cert = os.path.join(workdir, "rapi.pem")
                self.mond_port = 41815
                self.agent_port = 41817
                self.agent_cert = os.path.join(workdir, "server.pem")
                self.plain_http = True
                self.hmac_key_file = os.path.join(workdir, "hmac.key")
                os.makedirs(workdir, exist_ok=True)
                with open(self.hmac_key_file, "w") as f:
                    f.write("0" * 40 + "\n")
                made.append(self)

        fake = types.ModuleType("maintd.sim.embed")
        fake.EmbeddedSimulator = FakeSim  # type: ignore[attr-defined]
        opts = Options()
        opts.parseOptions(["--simulate", "-p", "0"])
        with mock.patch.dict(sys.modules, {"maintd.sim.embed": fake}):
            svc = tap.makeService(opts, reactor=self.reactor)
        (sim,) = made
        tmp = svc.config.state_dir
        self.assertTrue(os.path.isdir(tmp))
        self.assertNotEqual(tmp, "/var/lib/ganeti-maintd")
        self.assertEqual(svc.config.rapi, "https://127.0.0.1:45080")
        self.assertEqual(svc.config.rapi_user, "sim")
        self.assertEqual(svc.config.mond_port, 41815)
        self.assertEqual((svc.config.agent_port, svc.config.hmac_key),
                         (41817, sim.hmac_key_file), "the simulator's signed agents")
        self.assertEqual(svc.config.bind, "127.0.0.1")  # a demo stays local
        self.assertEqual(svc.config.ctl_socket, os.path.join(tmp, "ctl.sock"))
        self.assertTrue(sim.workdir.startswith(tmp))
        children = list(svc)
        self.assertLess(children.index(sim), children.index(svc.rounds))
        svc.startService()
        self.assertTrue(sim.running)
        self.successResultOf(svc.stopService())
        self.assertFalse(sim.running)
        self.assertFalse(os.path.exists(tmp))  # the temporary state dir is gone

    def test_rapi_and_mond_clients_are_built_when_available(self) -> None:
        built: dict[str, Any] = {}

        class FakeRapi:
            @classmethod
            def from_config(cls, config: DaemonConfig, reactor: Any) -> FakeRapi:
                built["rapi"] = config.rapi
                return cls()

        class FakeMond:
            def __init__(self, reactor: Any, **kw: Any) -> None:
                built["mond"] = kw

        rapi_mod = types.ModuleType("maintd.cluster.rapi.client")
        rapi_mod.RapiClient = FakeRapi  # type: ignore[attr-defined]
        mond_mod = types.ModuleType("maintd.cluster.mond")
        mond_mod.MondClient = FakeMond  # type: ignore[attr-defined]
        with mock.patch.dict(
            sys.modules, {"maintd.cluster.rapi.client": rapi_mod, "maintd.cluster.mond": mond_mod}
        ):
            svc = self.make(mond_port=1999, mond_parallel=7)
        self.assertEqual(built["rapi"], "http://127.0.0.1:1")
        self.assertEqual(built["mond"]["port"], 1999)
        self.assertEqual(built["mond"]["parallel"], 7)
        self.assertIsInstance(svc.rounds.round_fn.rapi, FakeRapi)  # type: ignore[attr-defined]


class LogLevelTests(SynchronousTestCase):
    def emit_both(self, debug: bool) -> list[str]:
        publisher = LogPublisher()
        seen: list[str] = []
        publisher.addObserver(lambda e: seen.append(formatEvent(e)))
        svc = LogLevelService(debug, publisher)
        svc.startService()
        for level in (LogLevel.debug, LogLevel.info):
            publisher({"log_level": level, "log_format": level.name, "log_namespace": "t"})
        svc.stopService()
        return seen

    def test_connection_chatter_only_with_debug(self) -> None:
        """Every outgoing connection's factory start/stop line (pooled HTTP to
        RAPI, one-shot connections to each node's mond) is hidden without -d."""

        def emit(debug: bool) -> list[str]:
            publisher = LogPublisher()
            seen: list[str] = []
            publisher.addObserver(lambda e: seen.append(formatEvent(e)))
            svc = LogLevelService(debug, publisher)
            svc.startService()
            for namespace in (
                "twisted.web.client._HTTP11ClientFactory",
                "twisted.internet.endpoints.OneShotFactory",
            ):
                for verb in ("Starting", "Stopping"):
                    publisher(
                        {
                            "log_level": LogLevel.info,
                            "log_format": verb + " factory {factory!r}",
                            "factory": "F",
                            "log_namespace": namespace,
                        }
                    )
            publisher({"log_level": LogLevel.info, "log_format": "round 1 done", "log_namespace": "maintd.daemon.scheduler"})
            svc.stopService()
            return seen

        self.assertEqual(emit(False), ["round 1 done"])
        self.assertEqual(len(emit(True)), 5)

    def test_debug_events_only_with_debug(self) -> None:
        self.assertEqual(self.emit_both(debug=False), ["info"])
        self.assertEqual(self.emit_both(debug=True), ["debug", "info"])


class StateAfterRoundTests(SynchronousTestCase):
    def test_round_keeps_existing_incidents(self) -> None:
        isolate_from_other_parts(self)
        d = os.path.abspath(self.mktemp())
        store = StateStore.open(d)
        store.commit(MaintState(evacuated=("a",), jobs=(5,)))
        store.close()
        reactor = MemoryReactorClock()
        svc = tap.makeService(DaemonConfig.for_tests(state_dir=d), reactor=reactor)
        svc.startService()
        reactor.advance(0)
        self.successResultOf(svc.stopService())
        self.assertEqual(svc.store.state.evacuated, ("a",))
        self.assertEqual(svc.store.state.jobs, (5,))


class PortInUseTests(SynchronousTestCase):
    def test_port_in_use_is_a_one_line_startup_error(self) -> None:
        import socket

        from twisted.internet import reactor

        isolate_from_other_parts(self)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            config = DaemonConfig.for_tests(state_dir=os.path.abspath(self.mktemp()), port=port)
            svc = tap.makeService(config, reactor=reactor)
            self.addCleanup(svc.store.close)
            e = self.assertRaises(SystemExit, svc.privilegedStartService)
        self.assertIn(f"cannot listen on 127.0.0.1 port {port}", str(e))


class ShutdownLoggingTests(SynchronousTestCase):
    def test_log_filter_outlives_the_slowest_child(self) -> None:
        from twisted.application import service
        from twisted.internet import defer

        slow_stop: defer.Deferred[None] = defer.Deferred()

        class Slow(service.Service):
            def stopService(self) -> defer.Deferred[None]:
                super().stopService()
                return slow_stop

        top = tap.MaintDaemon()
        top.log_level = LogLevelService(False, LogPublisher())
        Slow().setServiceParent(top)
        top.startService()
        self.assertTrue(top.log_level.running)
        d = top.stopService()
        self.assertTrue(top.log_level.running)  # debug events still filtered
        slow_stop.callback(None)
        self.successResultOf(d)
        self.assertFalse(top.log_level.running)
