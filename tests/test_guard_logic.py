"""Guardrails, pure part (maintd.decide.guardrails): limits, pause, storm breaker,
budget, busy rounds and the /1/overview object (also served by the HTTP API)."""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from maintd.daemon.api import StateAPI
from maintd.daemon.state import Action, Incident, MaintState, RepairStatus
from maintd.decide import guardrails as G


def inc(uuid: str, node: str, status: RepairStatus = RepairStatus.NOTED,
        action: Action = Action.EVACUATE, ctime: float = 0.0) -> Incident:
    return Incident(uuid=uuid, node=f"u-{node}", node_name=node, original={"n": uuid},
                    action=action, status=status, ctime=ctime)


class LimitTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(G.parse_limit("3"), G.Limit(count=3))
        self.assertEqual(G.parse_limit(" 25% "), G.Limit(percent=25.0))
        self.assertEqual(G.parse_limit(0), G.Limit(count=0))
        for bad in ("x", "-1", "0%", "101%", "%", "1.5", True, None):
            self.assertRaises(ValueError, G.parse_limit, bad)

    def test_resolve(self) -> None:
        self.assertEqual(G.Limit(percent=10).resolve(40), 4)
        self.assertEqual(G.Limit(percent=10).resolve(45), 4)
        self.assertEqual(G.Limit(percent=10).resolve(5), 1, "a percentage is at least 1 node")
        self.assertEqual(G.Limit(count=7).resolve(3), 7)
        # the storm threshold is never under 2 nodes
        self.assertEqual(G.storm_threshold(G.Limit(percent=10), 12), 2)
        self.assertEqual(G.storm_threshold(G.Limit(count=0), 100), 2)
        self.assertEqual(G.storm_threshold(G.DEFAULT_STORM_THRESHOLD, 40), 4)

    def test_duration(self) -> None:
        self.assertEqual(G.parse_duration("90"), 90)
        self.assertEqual(G.parse_duration("15m"), 900)
        self.assertEqual(G.parse_duration("2h"), 7200)
        self.assertEqual(G.parse_duration("1d"), 86400)
        for bad in ("", "0", "-5m", "soon", "inf"):
            self.assertRaises(ValueError, G.parse_duration, bad)


class PauseTests(SynchronousTestCase):
    def test_ctl_pause_until_and_expiry(self) -> None:
        guard = G.paused({}, reason="kernel upgrade", duration=600, now=1000)
        p = G.current_pause(guard, 1200)
        self.assertEqual(p, G.Pause("kernel upgrade", 1600.0, "ctl"))
        self.assertIsNone(G.current_pause(guard, 1600))
        self.assertTrue(G.expired(guard, 1600))
        self.assertFalse(G.expired(guard, 1599))

    def test_open_ended_and_resume(self) -> None:
        guard = G.paused({"x": 1}, reason="", duration=None, now=5)
        self.assertEqual(G.current_pause(guard, 1e12), G.Pause("no reason given", None, "ctl"))
        self.assertEqual(G.resumed(guard), {"x": 1})

    def test_tag(self) -> None:
        guard = G.with_tags({}, {"other", "maintd:pause"})
        self.assertEqual(G.current_pause(guard, 0).source, "tag")  # type: ignore[union-attr]
        self.assertIsNone(G.current_pause(G.with_tags(guard, {"maintd:pause:x"}), 0),
                          "the exact tag name only")
        # the operator's pause is shown first; resume leaves the tag's
        both = G.paused(guard, reason="r", duration=None, now=0)
        self.assertEqual(G.current_pause(both, 0).source, "ctl")  # type: ignore[union-attr]
        self.assertEqual(G.current_pause(G.resumed(both), 0).source, "tag")  # type: ignore[union-attr]

    def test_bad_duration(self) -> None:
        self.assertRaises(ValueError, G.paused, {}, reason="", duration=0, now=0)


class BreakerTests(SynchronousTestCase):
    def test_trip_hold_reset(self) -> None:
        b = G.breaker_after(G.Breaker(), 12, 4)
        self.assertTrue(b.tripped)
        self.assertTrue(G.breaker_after(b, 4, 4).tripped, "at the threshold: unchanged")
        self.assertFalse(G.breaker_after(b, 3, 4).tripped)
        self.assertFalse(G.breaker_after(G.Breaker(), 4, 4).tripped)

    def test_release_until_the_count_falls(self) -> None:
        guard = {"breaker": G.breaker_after(G.Breaker(), 12, 4).to_json()}
        rel = G.Breaker.from_guard(G.released(guard))
        self.assertFalse(rel.tripped)
        self.assertFalse(G.breaker_after(rel, 12, 4).tripped, "released: stays off")
        rearmed = G.breaker_after(rel, 1, 4)
        self.assertFalse(rearmed.released)
        self.assertTrue(G.breaker_after(rearmed, 5, 4).tripped, "re-armed after falling under")

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a loaded machine
    @given(st.lists(st.integers(0, 50), max_size=30), st.integers(2, 20))
    def test_tripped_only_above(self, counts: list[int], threshold: int) -> None:
        b = G.Breaker()
        for c in counts:
            b = G.breaker_after(b, c, threshold)
            if c > threshold:
                self.assertTrue(b.tripped)
            if c < threshold:
                self.assertFalse(b.tripped)


class BusyTests(SynchronousTestCase):
    def test_busy_when_work_in_progress(self) -> None:
        self.assertFalse(G.work_in_progress(MaintState(), 0))
        pending = MaintState(incidents=(inc("a", "n1", RepairStatus.PENDING),))
        self.assertTrue(G.work_in_progress(pending, 0))
        self.assertTrue(G.work_in_progress(MaintState(harep={"r": {"instance": "i"}}), 0))
        bal = MaintState(last_round={"notes": [{"step": "balance", "jobs": [3]}]})
        self.assertTrue(G.work_in_progress(bal, 0))
        nobal = MaintState(last_round={"notes": [{"step": "balance", "moves": 0}]})
        self.assertFalse(G.work_in_progress(nobal, 0))
        # only a blocked, noted incident (full cluster, master): idle rounds
        self.assertFalse(G.work_in_progress(MaintState(incidents=(inc("b", "n2"),)), 0))
        paused = attrs.evolve(pending, guard=G.paused({}, reason="", duration=None, now=0))
        self.assertFalse(G.work_in_progress(paused, 0), "paused: idle rounds")


class OverviewTests(SynchronousTestCase):
    STATE = MaintState(
        incidents=(inc("a", "n1", RepairStatus.PENDING), inc("b", "n2"), inc("c", "n3"),
                   inc("d", "n4", RepairStatus.COMPLETED),
                   inc("e", "n5", RepairStatus.PENDING, Action.LIVE_REPAIR)),
        guard={"breaker": {"tripped": True, "released": False, "reporting": 12, "threshold": 4},
               "max-evacuating": 2, "pause": {"reason": "upgrade", "until": 2000.0, "since": 0}},
    )

    def test_fields(self) -> None:
        ov = G.overview(self.STATE, now=1000, next_round=1005.0, version="9.9")
        self.assertEqual(ov, {
            "evacuating": 1,
            "max-evacuating": 2,
            "storm-breaker": {"tripped": True, "reporting": 12, "threshold": 4},
            "paused": {"reason": "upgrade", "until": 2000.0, "source": "ctl"},
            "incidents": {"noted": 2, "pending": 2, "canceled": 0, "failed": 0,
                          "completed": 1},
            "next-round": 1005.0,
            "version": "9.9",
        })
        later = G.overview(self.STATE, now=2000, max_evacuating=3)
        self.assertIs(later["paused"], False, "the pause ended")
        self.assertEqual(later["max-evacuating"], 3)
        self.assertIsNone(later["next-round"])

    def test_http_route(self) -> None:
        seen: list[Any] = []

        def build(state: MaintState) -> dict[str, Any]:
            seen.append(state)
            return G.overview(state, now=1000, next_round=1300.0, version="x")

        api = StateAPI(MaintState(), overview=build)
        api.update(self.STATE)
        http = StubTreq(api.resource())
        for path in ("/1/overview", "/1/overview/"):
            for method in ("GET", "HEAD"):
                r = self.successResultOf(http.request(method, "http://127.0.0.1:1816" + path))
                self.assertEqual(r.code, 200)
                body = self.successResultOf(r.content())
                if method == "GET":
                    ov = json.loads(body)
                    self.assertEqual(ov["evacuating"], 1)
                    self.assertEqual(ov["next-round"], 1300.0)
        self.assertIs(seen[-1], self.STATE, "built from the latest state")
        self.assertEqual(json.loads(api.body("overview"))["storm-breaker"]["reporting"], 12)


class BusyRoundSchedulingTests(SynchronousTestCase):
    """The round service: --busy-round-delay while work is in progress."""

    def setUp(self) -> None:
        from twisted.internet import task

        from maintd.daemon.scheduler import RoundService
        from tests.test_core_scheduler import FakeRounds

        self.clock = task.Clock()
        self.rounds = FakeRounds()
        self.busy = True
        self.service = RoundService(self.rounds, clock=self.clock, round_delay=300,
                                    busy_delay=5, is_busy=lambda: self.busy)
        self.service.startService()
        self.clock.advance(0)
        self.addCleanup(self.service.stopService)

    def test_busy_then_idle(self) -> None:
        self.assertIsNone(self.service.next_round, "a round runs")
        self.clock.advance(30)
        self.rounds.finish(1)
        self.assertEqual(self.service.next_round, 35)
        self.clock.advance(5)
        self.assertEqual(self.rounds.started, [1, 2])
        self.busy = False
        self.rounds.finish(2)
        self.assertEqual(self.service.next_round, 335)
        self.clock.advance(299)
        self.assertEqual(self.rounds.started, [1, 2])
        self.clock.advance(1)
        self.assertEqual(self.rounds.started, [1, 2, 3])

    def test_never_longer_than_round_delay(self) -> None:
        from twisted.internet import task

        from maintd.daemon.config import DaemonConfig
        from maintd.daemon.scheduler import RoundService
        from tests.test_core_scheduler import FakeRounds

        cfg = DaemonConfig.for_tests(state_dir="/tmp/x", round_delay=3, busy_round_delay=5)
        self.assertEqual(cfg.next_busy_delay, 3)
        clock, rounds = task.Clock(), FakeRounds()
        svc = RoundService(rounds, clock=clock, round_delay=3, busy_delay=5, is_busy=lambda: True)
        svc.startService()
        clock.advance(0)
        rounds.finish(1)
        clock.advance(3)
        self.assertEqual(rounds.started, [1, 2])
        svc.stopService()

    def test_a_broken_check_means_idle(self) -> None:
        def broken() -> bool:
            raise ValueError("bad state")

        self.service.is_busy = broken
        self.rounds.finish(1)
        self.assertEqual(self.service.next_round, 300)


class OptionTests(SynchronousTestCase):
    def test_options_and_config_file(self) -> None:
        import os
        import tempfile

        from maintd.daemon.config import ConfigError, DaemonConfig, read_config_file
        from maintd.daemon.options import Options

        o = Options()
        o.parseOptions(["--max-evacuating", "10%", "--storm-threshold", "6",
                        "--busy-round-delay", "2"])
        c = o.daemon_config
        self.assertEqual((c.max_evacuating, c.storm_threshold, c.busy_round_delay),
                         (G.Limit(percent=10), G.Limit(count=6), 2.0))
        d = DaemonConfig()
        self.assertEqual((d.max_evacuating, d.storm_threshold, d.busy_round_delay),
                         (G.Limit(count=1), G.Limit(percent=10), 5.0))
        from twisted.python.usage import UsageError

        self.assertRaises(UsageError, Options().parseOptions, ["--max-evacuating", "lots"])
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.toml")
            with open(path, "w") as f:
                f.write("max-evacuating = 3\nstorm-threshold = \"20%\"\n")
            self.assertEqual(read_config_file(path), {"max_evacuating": G.Limit(count=3),
                                                      "storm_threshold": G.Limit(percent=20)})
            with open(path, "w") as f:
                f.write("max-evacuating = \"200%\"\n")
            self.assertRaises(ConfigError, read_config_file, path)


class StormLeftoverTests(SynchronousTestCase):
    def test_only_after_a_storm_only_noted_on_ok_nodes(self) -> None:
        state = MaintState(incidents=(
            inc("a", "n1"), inc("b", "n2"), inc("c", "n3", RepairStatus.PENDING),
            inc("d", "n4", action=Action.LIVE_REPAIR)))
        same, gone = G.storm_leftovers(state, ["n1", "n3", "n4"], False, 5)
        self.assertEqual((same, gone), (state, []), "no storm: incidents stay")
        new, gone = G.storm_leftovers(state, ["n1", "n3", "n4"], True, 5)
        self.assertEqual(sorted(i.uuid for i in gone), ["a", "d"])
        self.assertEqual(new.incident("a").status, RepairStatus.CANCELED)  # type: ignore[union-attr]
        self.assertEqual(new.incident("b").status, RepairStatus.NOTED,  # type: ignore[union-attr]
                         "n2 still reports")
        self.assertEqual(new.incident("c").status, RepairStatus.PENDING,  # type: ignore[union-attr]
                         "work in progress goes on")


class ControlOpTests(SynchronousTestCase):
    """The control socket's guardrail ops on a fake state access."""

    def setUp(self) -> None:
        from twisted.internet import task

        from maintd.daemon import control_guard

        self.ops = control_guard
        self.clock = task.Clock()
        self.clock.advance(1000)
        outer = self

        class Store:
            pass

        class Access:
            clock = outer.clock
            overview = None
            state = MaintState()
            store = Store()

            def current(self) -> MaintState:
                return self.state

            def update(self, fn: Any) -> MaintState:
                self.state = fn(self.state)
                return self.state

        self.access = Access()

    def test_pause_resume_release_overview(self) -> None:
        a = self.ops.handle(self.access, "pause", {"op": "pause", "reason": " upgrade ", "for": 60})
        self.assertEqual(a, {"ok": True, "paused": {"reason": "upgrade", "until": 1060.0,
                                                    "source": "ctl"}})
        ov = self.ops.handle(self.access, "overview", {"op": "overview"})
        self.assertEqual(ov["overview"]["paused"]["until"], 1060.0)  # type: ignore[index]
        self.assertEqual(self.ops.handle(self.access, "resume", {}), {"ok": True, "paused": False})
        self.access.state = attrs.evolve(self.access.state, guard={"breaker": {
            "tripped": True, "released": False, "reporting": 9, "threshold": 4}})
        a = self.ops.handle(self.access, "release", {})
        self.assertEqual(a["storm-breaker"]["tripped"], False)  # type: ignore[index]
        self.assertIsNone(self.ops.handle(self.access, "list", {}), "not ours")

    def test_pause_stops_the_round_in_progress(self) -> None:
        from maintd.daemon.control import track

        @attrs.define
        class Round:
            store: Any
            submitting: bool = True

        ctx = Round(self.access.store)
        track(ctx)
        self.ops.handle(self.access, "pause", {"op": "pause"})
        self.assertFalse(ctx.submitting, "no further job in the running round")

    def test_bad_requests(self) -> None:
        for req in ({"for": 0}, {"for": -3}, {"for": True}, {"for": "1h"}, {"reason": 5},
                    {"reason": "x" * 2000}):
            a = self.ops.handle(self.access, "pause", {"op": "pause", **req})
            self.assertFalse(a["ok"], req)  # type: ignore[index]
        self.assertEqual(self.access.state, MaintState(), "nothing changed")
