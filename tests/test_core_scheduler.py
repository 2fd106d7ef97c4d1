"""The round service (maintd.daemon.scheduler) and the round runner (maintd.daemon.round)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from maintd.daemon.config import DaemonConfig
from maintd.daemon.round import RoundContext, RoundRunner, RoundStopped, run_round
from maintd.daemon.scheduler import RoundService
from maintd.daemon.state import MaintState
from maintd.daemon.store import StateStore


class FakeRounds:
    """A round function whose rounds end when the test says so."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.pending: dict[int, defer.Deferred[None]] = {}
        self.stop_flags: dict[int, Callable[[], bool]] = {}
        self.cancelled: list[int] = []

    async def __call__(self, number: int, should_stop: Callable[[], bool]) -> None:
        self.started.append(number)
        self.stop_flags[number] = should_stop
        d: defer.Deferred[None] = defer.Deferred()
        self.pending[number] = d
        try:
            await d
        except defer.CancelledError:
            self.cancelled.append(number)
            raise

    def finish(self, number: int) -> None:
        self.pending.pop(number).callback(None)

    def fail(self, number: int, error: Exception) -> None:
        self.pending.pop(number).errback(error)


class RoundServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.rounds = FakeRounds()
        self.service = RoundService(
            self.rounds, clock=self.clock, round_delay=300, failure_delay=60, stop_timeout=20
        )

    def start(self) -> None:
        self.service.startService()
        self.clock.advance(0)

    def test_first_round_runs_at_start(self) -> None:
        self.start()
        self.assertEqual(self.rounds.started, [1])

    def test_rounds_never_overlap(self) -> None:
        self.start()
        self.clock.pump([100] * 20)  # a long round: 2000 s
        self.assertEqual(self.rounds.started, [1])

    def test_next_round_starts_round_delay_after_the_end(self) -> None:
        self.start()
        self.clock.advance(1000)  # round 1 takes 1000 s
        self.rounds.finish(1)
        self.clock.advance(299)
        self.assertEqual(self.rounds.started, [1])
        self.clock.advance(1)
        self.assertEqual(self.rounds.started, [1, 2])

    def test_failed_round_logs_one_line_and_backs_off(self) -> None:
        self.start()
        with capturedLogs() as events:
            self.rounds.fail(1, ConnectionRefusedError("http://127.0.0.1:1/2/info"))
        errors = [e for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(errors), 1)
        text = errors[0]["log_format"].format(**errors[0])
        self.assertIn("round 1 failed", text)
        self.assertIn("http://127.0.0.1:1/2/info", text)
        self.assertIn("60", text)
        self.clock.advance(59)
        self.assertEqual(self.rounds.started, [1])
        self.clock.advance(1)
        self.assertEqual(self.rounds.started, [1, 2])
        self.assertEqual(self.service.failures, 1)

    def test_loop_survives_many_failures(self) -> None:
        self.start()
        for n in range(1, 6):
            self.rounds.fail(n, RuntimeError(f"boom {n}"))
            self.clock.advance(60)
        self.assertEqual(self.rounds.started, [1, 2, 3, 4, 5, 6])
        self.rounds.finish(6)
        self.clock.advance(300)
        self.assertEqual(self.rounds.started[-1], 7)

    def test_stop_when_idle_cancels_the_timer(self) -> None:
        self.start()
        self.rounds.finish(1)
        d = self.service.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.clock.advance(10_000)
        self.assertEqual(self.rounds.started, [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_waits_for_the_running_round(self) -> None:
        self.start()
        d = self.service.stopService()
        self.assertNoResult(d)
        self.assertTrue(self.rounds.stop_flags[1]())  # the round is asked to stop
        self.clock.advance(5)
        self.rounds.finish(1)
        self.assertIsNone(self.successResultOf(d))
        self.clock.advance(1000)
        self.assertEqual(self.rounds.started, [1])

    def test_stop_is_bounded(self) -> None:
        self.start()
        d = self.service.stopService()
        self.clock.advance(19)
        self.assertNoResult(d)
        self.assertEqual(self.rounds.cancelled, [])
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.rounds.cancelled, [1])

    def test_restart_after_stop(self) -> None:
        self.start()
        self.rounds.finish(1)
        self.successResultOf(self.service.stopService())
        self.start()
        self.assertEqual(self.rounds.started, [1, 2])


def step_recording(name: str, seen: list[str]) -> Any:
    async def step(ctx: RoundContext) -> None:
        seen.append(name)

    step.__qualname__ = name
    return step


class RunRoundTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.store = StateStore.open(self.dir)
        self.addCleanup(self.store.close)
        self.config = DaemonConfig.for_tests(state_dir=self.dir)
        self.clock = task.Clock()
        self.clock.advance(1234)

    def ctx(self, **kw: Any) -> RoundContext:
        return RoundContext(
            number=7,
            now=self.clock.seconds(),
            config=kw.pop("config", self.config),
            reactor=self.clock,
            state=self.store.state,
            store=self.store,
            **kw,
        )

    def run_steps(self, ctx: RoundContext, steps: list[Any], **kw: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(run_round(ctx, steps, **kw))

    def test_steps_run_in_order_and_the_round_is_recorded(self) -> None:
        seen: list[str] = []

        async def deciding(ctx: RoundContext) -> None:
            ctx.note(action="evacuate", node="node1")

        steps = [step_recording("a", seen), deciding, step_recording("b", seen)]
        self.successResultOf(self.run_steps(self.ctx(), steps))
        self.assertEqual(seen, ["a", "b"])
        last = self.store.state.last_round
        self.assertEqual(last["number"], 7)
        self.assertEqual(last["result"], "ok")
        self.assertEqual(last["notes"], [{"action": "evacuate", "node": "node1"}])

    def test_commit_is_durable_and_visible_to_later_steps(self) -> None:
        seen: list[tuple[str, ...]] = []

        async def add(ctx: RoundContext) -> None:
            await ctx.commit(attrs.evolve(ctx.state, evacuated=("inst1",)))

        async def look(ctx: RoundContext) -> None:
            seen.append(ctx.state.evacuated)

        self.successResultOf(self.run_steps(self.ctx(), [add, look]))
        self.assertEqual(seen, [("inst1",)])
        self.store.close()
        self.assertEqual(StateStore.open(self.dir).state.evacuated, ("inst1",))

    def test_failing_step_ends_the_round_and_is_recorded(self) -> None:
        seen: list[str] = []

        async def broken(ctx: RoundContext) -> None:
            raise ConnectionRefusedError("RAPI at http://127.0.0.1:1 unreachable")

        d = self.run_steps(self.ctx(), [broken, step_recording("after", seen)])
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertEqual(seen, [])
        last = self.store.state.last_round
        self.assertEqual(last["result"], "failed")
        self.assertIn("http://127.0.0.1:1", last["error"])

    def test_stop_request_ends_the_round_between_steps(self) -> None:
        seen: list[str] = []
        stop = [False]

        async def first(ctx: RoundContext) -> None:
            seen.append("first")
            stop[0] = True

        d = self.run_steps(
            self.ctx(), [first, step_recording("second", seen)], should_stop=lambda: stop[0]
        )
        self.failureResultOf(d, RoundStopped)
        self.assertEqual(seen, ["first"])
        self.assertEqual(self.store.state.last_round["result"], "stopped")

    def test_runner_builds_a_fresh_context_per_round(self) -> None:
        contexts: list[RoundContext] = []

        async def grab(ctx: RoundContext) -> None:
            contexts.append(ctx)
            ctx.free_nodes.add("node1")

        runner = RoundRunner(
            config=attrs.evolve(self.config, dry_run=True),
            reactor=self.clock,
            store=self.store,
            steps=[grab],
            submitting=lambda: False,
        )
        self.successResultOf(defer.Deferred.fromCoroutine(runner(1, lambda: False)))
        self.clock.advance(5)
        self.successResultOf(defer.Deferred.fromCoroutine(runner(2, lambda: False)))
        a, b = contexts
        self.assertEqual((a.number, b.number), (1, 2))
        self.assertEqual(b.now - a.now, 5)
        self.assertEqual(b.free_nodes, {"node1"})  # only what this round's step added
        self.assertIsNot(a.free_nodes, b.free_nodes)
        self.assertFalse(a.submitting)
        self.assertTrue(self.store.state.last_round["dry_run"])
        self.assertEqual(b.state, MaintState(last_round=b.state.last_round))
