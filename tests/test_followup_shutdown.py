"""Stopping the daemon closes the RAPI (and mond) clients after the last round."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task, tcp
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.daemon.scheduler import RoundService
from tests.test_core_scheduler import FakeRounds
from tests.test_round_e2e import Daemon, drbd, scenario


class Closer:
    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    async def __call__(self) -> None:
        self.calls += 1
        if self.fail:
            raise OSError("pool gone")


class OnStopTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.rounds = FakeRounds()
        self.closer = Closer()
        self.service = RoundService(self.rounds, clock=self.clock, round_delay=300,
                                    stop_timeout=20, on_stop=self.closer)

    def test_closes_after_the_running_round(self) -> None:
        self.service.startService()
        self.clock.advance(0)
        d = self.service.stopService()
        self.assertNoResult(d)
        self.assertEqual(self.closer.calls, 0, "not while round 1 still runs")
        self.rounds.finish(1)
        self.successResultOf(d)
        self.assertEqual(self.closer.calls, 1)

    def test_closes_when_idle(self) -> None:
        self.service.startService()
        self.clock.advance(0)
        self.rounds.finish(1)
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.closer.calls, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closes_after_a_cancelled_round(self) -> None:
        self.service.startService()
        self.clock.advance(0)
        d = self.service.stopService()
        self.clock.advance(20)  # the round ignores the stop request
        self.successResultOf(d)
        self.assertEqual((self.rounds.cancelled, self.closer.calls), ([1], 1))

    def test_close_error_is_logged_not_raised(self) -> None:
        self.service.on_stop = Closer(fail=True)
        self.service.startService()
        self.clock.advance(0)
        self.rounds.finish(1)
        with capturedLogs() as events:
            self.successResultOf(self.service.stopService())
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("pool gone", errors[0]["error"])


def client_connections(port: int) -> list[Any]:
    """Open client TCP connections of this process to 127.0.0.1:port."""
    out = []
    for selectable in reactor.getReaders() + reactor.getWriters():  # type: ignore[attr-defined]
        if isinstance(selectable, tcp.Client) and selectable.connected:
            peer = selectable.getPeer()
            if peer.port == port:
                out.append(selectable)
    return out


class RealClientShutdownTests(TestCase):
    timeout = 60

    def test_no_connections_left(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._no_connections())

    async def _no_connections(self) -> None:
        d = Daemon(self, scenario([drbd("a1", "n2", "n3")], {}))
        await d.start()
        daemon = d.daemon
        rapi = daemon.rounds.round_fn.rapi
        pool = rapi._pool
        rapi_port = int(d.sim.rapi_url.rsplit(":", 1)[1])
        self.assertGreater(len(client_connections(rapi_port)), 0, "round 1 left pooled ones")
        self.assertTrue(pool._timeouts, "pooled connections wait for their idle timeout")
        d.daemon = None  # stopped here, not by the helper
        await daemon.stopService()
        self.assertEqual(client_connections(rapi_port), [])
        self.assertEqual((pool._connections, pool._timeouts), ({}, {}))
        pending = [c for c in reactor.getDelayedCalls()
                   if getattr(c.func, "__self__", None) is pool]
        self.assertEqual(pending, [])
