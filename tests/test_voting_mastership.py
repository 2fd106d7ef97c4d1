"""MastershipService: periodic re-check with task.Clock and a fake vote."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.cluster.voting import EXIT_NOTMASTER, NodedTLS, Tally, TwistedNodedClient
from maintd.daemon.mastership import Mastership, MastershipService, attach_runner, runtime_vote

from .test_voting_count import ME, OTHER, ballots
from .test_voting_fakes import Certs, start_nodes, write_ssconf


def tally(spec: str) -> Tally:
    return Tally(ME, ballots(spec))


class FakeVote:
    """Returns the next scripted tally (the last one repeats); records calls."""

    def __init__(self, *specs: str | Exception) -> None:
        self.specs = list(specs)
        self.calls = 0

    async def __call__(self) -> Tally:
        self.calls += 1
        spec = self.specs.pop(0) if len(self.specs) > 1 else self.specs[0]
        if isinstance(spec, Exception):
            raise spec
        return tally(spec)


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.exits: list[int] = []
        self.mastership = Mastership(hostname=ME, verified=True)
        self.changes: list[bool] = []
        self.mastership.on_change(self.changes.append)

    def service(self, vote: FakeVote) -> MastershipService:
        svc = MastershipService(
            self.mastership, vote, clock=self.clock, interval=60.0, retries=6, retry_interval=10.0,
            exit=self.exits.append,
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    def test_checks_every_interval_and_keeps_running_while_master(self) -> None:
        vote = FakeVote("mmo")
        self.service(vote)
        self.assertEqual(vote.calls, 0, "the startup check already voted")
        self.clock.advance(60)
        self.clock.advance(60)
        self.clock.advance(60)
        self.assertEqual(vote.calls, 3)
        self.assertTrue(self.mastership.is_master)
        self.assertEqual(self.exits, [])

    def test_master_moved_away_stops_submission_and_exits_11(self) -> None:
        vote = FakeVote("mmo", "moo")
        self.service(vote)
        self.clock.advance(60)
        self.assertTrue(self.mastership.is_master)
        self.clock.advance(60)
        self.assertFalse(self.mastership.is_master)
        self.assertTrue(self.mastership.lost)
        self.assertEqual(self.changes, [False])
        self.assertEqual(self.exits, [EXIT_NOTMASTER])
        assert self.mastership.last is not None
        self.assertEqual(self.mastership.last.votes, {OTHER: 2, ME: 1})
        # nothing more happens afterwards
        self.clock.advance(600)
        self.assertEqual(self.exits, [EXIT_NOTMASTER])
        self.assertEqual(self.changes, [False])

    def test_undecided_pauses_submission_and_resumes_when_won(self) -> None:
        vote = FakeVote("m--", "m--", "mm-")
        self.service(vote)
        self.clock.advance(60)
        self.assertFalse(self.mastership.is_master, "paused while undecided")
        self.assertFalse(self.mastership.lost)
        self.clock.advance(10)
        self.assertFalse(self.mastership.is_master)
        self.clock.advance(10)
        self.assertTrue(self.mastership.is_master)
        self.assertEqual(vote.calls, 3)
        self.assertEqual(self.exits, [])
        self.assertEqual(self.changes, [False, True])

    def test_undecided_after_retries_exits_11(self) -> None:
        vote = FakeVote("m--")
        self.service(vote)
        self.clock.advance(60)
        for _ in range(6):
            self.assertEqual(self.exits, [])
            self.clock.advance(10)
        self.assertEqual(vote.calls, 7)
        self.assertEqual(self.exits, [EXIT_NOTMASTER])
        self.assertTrue(self.mastership.lost)

    def test_errors_are_logged_and_do_not_stop_the_loop(self) -> None:
        vote = FakeVote(OSError("ssconf_node_list vanished"), "mmo")
        self.service(vote)
        self.clock.advance(60)
        self.assertTrue(self.mastership.is_master)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.clock.advance(60)
        self.assertEqual(vote.calls, 2)
        self.assertTrue(self.mastership.is_master)

    def test_stop_during_retry_wait_is_quiet(self) -> None:
        vote = FakeVote("m--")
        svc = self.service(vote)
        self.clock.advance(60)
        d = svc.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.clock.advance(600)
        self.assertEqual(vote.calls, 1)
        self.assertEqual(self.exits, [])


class RuntimeVoteTests(TestCase):
    """runtime_vote re-reads ssconf and asks the fake nodeds over TLS."""

    @defer.inlineCallbacks
    def test_failover_seen_by_the_runtime_vote(self) -> Any:
        d = self.mktemp()
        os.makedirs(d)
        certs = Certs(d)
        nodes = start_nodes(3, certs.cluster.path, certs.cluster.path)
        for n in nodes:
            self.addCleanup(n.stop)
            n.vote_for(ME)
        names = [f"node{i}.example.com" for i in (1, 2, 3)]
        write_ssconf(d, {name: n.host for name, n in zip(names, nodes, strict=True)}, ME)

        class Cfg:
            ssconf_dir = d
            noded_cert = certs.cluster.path
            noded_port = nodes[0].port

        client = TwistedNodedClient(reactor, NodedTLS.load(certs.cluster.path), port=nodes[0].port, timeout=5)
        vote = runtime_vote(Cfg(), reactor, ME, client=client)
        first = yield defer.Deferred.fromCoroutine(vote())
        self.assertEqual(first.in_favor, 3)
        for n in nodes[1:]:
            n.vote_for(OTHER)
        second = yield defer.Deferred.fromCoroutine(vote())
        self.assertEqual(second.votes, {OTHER: 2, ME: 1})
        self.assertEqual(second.verdict.value, "lost")


class _Ctx:
    def __init__(self, number: int, submitting: bool) -> None:
        self.number = number
        self.submitting = submitting


class _Runner:
    """The part of maintd.daemon.round.RoundRunner that attach_runner relies on."""

    def __init__(self) -> None:
        self.submitting = lambda: True

    def context(self, number: int) -> _Ctx:
        return _Ctx(number, self.submitting())


class AttachRunnerTests(SynchronousTestCase):
    """Lost mastership at run time: no further job submission."""

    def test_rounds_stop_submitting_when_mastership_is_lost(self) -> None:
        clock = task.Clock()
        mastership = Mastership(hostname=ME, verified=True)
        runner = _Runner()
        attach_runner(runner, mastership)
        exits: list[int] = []
        vote = FakeVote("mmo", "moo")
        svc = MastershipService(mastership, vote, clock=clock, interval=60.0, exit=exits.append)
        svc.startService()
        self.addCleanup(svc.stopService)

        first = runner.context(1)
        self.assertTrue(first.submitting)
        clock.advance(60)  # still master
        self.assertTrue(first.submitting)
        clock.advance(60)  # master moved away while round 1 is running
        self.assertFalse(first.submitting, "the round in progress must stop submitting")
        self.assertEqual(exits, [EXIT_NOTMASTER])
        self.assertFalse(runner.context(2).submitting, "and so must any later round")

    def test_uncertain_pauses_the_running_round_and_later_rounds_resume(self) -> None:
        clock = task.Clock()
        mastership = Mastership(hostname=ME, verified=True)
        runner = _Runner()
        attach_runner(runner, mastership)
        svc = MastershipService(mastership, FakeVote("m--", "mmm"), clock=clock, interval=60.0,
                                retry_interval=10.0, exit=self.fail)
        svc.startService()
        self.addCleanup(svc.stopService)
        running = runner.context(1)
        clock.advance(60)
        self.assertFalse(running.submitting)
        self.assertFalse(runner.context(2).submitting)
        clock.advance(10)
        self.assertTrue(mastership.is_master)
        self.assertFalse(running.submitting, "never switched back on mid-round")
        self.assertTrue(runner.context(3).submitting)
