"""The round service: runs one maintenance round at a time, forever.

Like Twisted's ``TimerService`` but owning its errors: ``TimerService``'s
``LoopingCall`` stops for good when the callable fails, so here every round's
outcome is caught, logged in one line, and followed by the next round.

* Rounds never overlap: the next one is scheduled only when the previous one
  has ended, ``round_delay`` seconds after that end (``failure_delay`` after a
  failed round: the back-off).  While ``is_busy()`` says work is in progress
  (see :func:`maintd.decide.guardrails.work_in_progress`) the next round comes
  ``busy_delay`` seconds after the end instead (never later than
  ``round_delay``); its first step waits for the jobs the round submitted.
  :attr:`RoundService.next_round` is when the next round starts (None while
  one runs).
* ``stopService`` cancels the pending timer, asks a running round to stop at
  its next safe point (between steps) and waits for it, at most
  ``stop_timeout`` seconds; then the round is cancelled.  Every state change
  is an atomic store write, so even a cancelled round leaves a consistent
  state.
* After the last round has ended (or been cancelled), ``stopService`` awaits
  the ``on_stop`` callable, if any: the daemon closes its RAPI and mond
  clients' connection pools there, so nothing stays open or scheduled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from maintd.daemon.round import RoundStopped, describe_error

log = Logger()

RoundFunction = Callable[[int, Callable[[], bool]], Awaitable[None]]


class RoundService(service.Service):
    name = "rounds"

    def __init__(
        self,
        round_fn: RoundFunction,
        *,
        clock: IReactorTime,
        round_delay: float,
        failure_delay: float | None = None,
        stop_timeout: float = 30.0,
        first_delay: float = 0.0,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        busy_delay: float | None = None,
        is_busy: Callable[[], bool] | None = None,
    ) -> None:
        self.round_fn = round_fn
        self.clock = clock
        self.round_delay = round_delay
        self.failure_delay = round_delay if failure_delay is None else failure_delay
        self.stop_timeout = stop_timeout
        self.first_delay = first_delay
        self.on_stop = on_stop
        self.busy_delay = round_delay if busy_delay is None else min(busy_delay, round_delay)
        self.is_busy = is_busy
        #: Clock time the next round starts at (None: a round runs, or stopped).
        self.next_round: float | None = None
        #: Rounds started so far (the number of the current or last round).
        self.rounds = 0
        self.failures = 0
        self.stopping = False
        self._call: IDelayedCall | None = None
        self._running: defer.Deferred[None] | None = None
        #: The operator asked for a round while one was running: start the
        #: next one right after it.
        self._again = False

    @property
    def running_round(self) -> bool:
        return self._running is not None

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        self._schedule(self.first_delay)

    def run_now(self) -> str:
        """Start the next round now (``ganeti-maintd-ctl round-now``).

        ``"started"``: it is running; ``"queued"``: a round is running, the
        next one starts as soon as it ends (no overlap, no delay);
        ``"stopping"``: the service is stopping, no round starts.
        """
        if self.stopping or not self.running:
            return "stopping"
        if self._running is not None:
            self._again = True
            return "queued"
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        log.info("round {number} started by the operator", number=self.rounds + 1)
        self._start_round()
        return "started"

    def _next_delay(self, delay: float) -> float:
        if self._again:
            self._again = False
            return 0.0
        return delay

    def _schedule(self, delay: float) -> None:
        if self.stopping or not self.running:
            return
        self.next_round = self.clock.seconds() + delay
        self._call = self.clock.callLater(delay, self._start_round)

    def _idle_or_busy_delay(self) -> float:
        if self.is_busy is None:
            return self.round_delay
        try:
            busy = self.is_busy()
        except Exception as e:  # never let the check stop the rounds
            log.error("cannot tell whether work is in progress: {error}",
                      error=describe_error(e))
            busy = False
        return self.busy_delay if busy else self.round_delay

    def _start_round(self) -> None:
        self._call = None
        self.next_round = None
        if self._running is not None:  # cannot happen; never overlap anyway
            return
        self.rounds += 1
        number = self.rounds
        started = self.clock.seconds()
        log.debug("round {number} starting", number=number)

        async def one() -> None:
            await self.round_fn(number, lambda: self.stopping)

        d = defer.Deferred.fromCoroutine(one())
        self._running = d
        d.addBoth(self._round_ended, number, started)

    def _round_ended(self, result: Any, number: int, started: float) -> None:
        self._running = None
        took = self.clock.seconds() - started
        if isinstance(result, Failure):
            if result.check(RoundStopped, defer.CancelledError) and self.stopping:
                log.info("round {number} stopped for shutdown", number=number)
                return
            self.failures += 1
            log.error(
                "round {number} failed after {took:.1f}s: {error}; next round in {delay:g}s",
                number=number,
                took=took,
                error=describe_error(result.value or Exception("unknown")),
                delay=0 if self._again else self.failure_delay,
            )
            # Text, not log.failure: a failed round is handled, not an
            # unhandled error (trial and error-log watchers count those).
            log.debug(
                "round {number} traceback:\n{traceback}",
                number=number,
                traceback=result.getTraceback(),
            )
            self._schedule(self._next_delay(self.failure_delay))
        else:
            delay = self._idle_or_busy_delay()
            log.info(
                "round {number} done in {took:.1f}s; next round in {delay:g}s",
                number=number,
                took=took,
                delay=0 if self._again else delay,
            )
            self._schedule(self._next_delay(delay))

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.stopping = True
        self.next_round = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        running = self._running
        if running is None:
            return defer.Deferred.fromCoroutine(self._after_last_round())
        log.info("waiting for round {number} to reach a safe point", number=self.rounds)
        done: defer.Deferred[None] = defer.Deferred()
        timer = self.clock.callLater(self.stop_timeout, self._give_up, running)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            d = defer.Deferred.fromCoroutine(self._after_last_round())
            d.chainDeferred(done)

        # _round_ended (added first) consumes the round's result; this
        # callback only learns that the round is over.
        running.addBoth(finished)
        return done

    async def _after_last_round(self) -> None:
        if self.on_stop is None:
            return
        try:
            await self.on_stop()
        except Exception as e:
            log.error("closing the round's clients failed: {error}", error=describe_error(e))

    def _give_up(self, running: defer.Deferred[None]) -> None:
        log.warn(
            "round {number} did not stop within {timeout:g}s; cancelling it",
            number=self.rounds,
            timeout=self.stop_timeout,
        )
        running.cancel()
