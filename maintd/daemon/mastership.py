"""Is this host the master?  Checked once at startup and then periodically.

Startup (:func:`check_at_startup_or_exit`) runs inside ``makeService``: twistd
calls it *before* it daemonises, binds ports or writes the pid file, so a
failed check ends the very process the service manager started, with
status 11 (not master) or 12 (ssconf/certificates unusable), nothing left
behind and the reason on stderr (the log file is not open yet).  The vote is
blocking there on purpose: the reactor is not running yet, so the nodes are
asked concurrently with stdlib ``ssl`` in threads which are all joined before
``makeService`` returns (no thread survives into the daemonised child).

While running, :class:`MastershipService` repeats the vote every
``--master-check-interval`` seconds with the Twisted client.  When the vote
is lost (master failover), the shared :class:`Mastership` flips to
not-master (the round context's ``submitting`` follows it, so no further job
is submitted), listeners are told, and the daemon stops with exit status 11
(:func:`exit_after_shutdown`) so the service manager on the new master runs
the daemon there.  While a vote is undecided (too many nodes silent)
submission is paused; undecided after the retries counts as lost, as at
startup.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from maintd.cluster import voting
from maintd.cluster.voting import (
    EXIT_NODESETUP_ERROR,
    EXIT_NOTMASTER,
    BlockingNodedClient,
    NodedTLS,
    NotMasterError,
    SetupError,
    Tally,
    TwistedNodedClient,
    Verdict,
)

log = Logger()


def own_hostname(config: Any) -> str:
    """``--hostname``, else this host's FQDN (what Ganeti's nodes answer)."""
    name = getattr(config, "hostname", None)
    return name or socket.getfqdn()


@attrs.define
class Mastership:
    """Shared between the mastership check and the round driver.

    ``is_master``: jobs may be submitted now (False while a re-check is
    undecided, and for good once lost).  ``lost``: final, the daemon is
    shutting down.  ``verified``: False when voting was skipped
    (``--no-voting --yes-do-it`` or ``--simulate``).
    """

    hostname: str
    verified: bool
    is_master: bool = True
    lost: bool = False
    last: Tally | None = None
    #: Ends the daemon with an exit status (set by the service composition);
    #: None: only mark the mastership lost.
    exit: Callable[[int], None] | None = attrs.field(default=None, repr=False)
    _listeners: list[Callable[[bool], object]] = attrs.field(factory=list, init=False, repr=False)

    def on_change(self, callback: Callable[[bool], object]) -> None:
        """Call ``callback(is_master)`` whenever ``is_master`` changes."""
        self._listeners.append(callback)

    def set_master(self, value: bool) -> None:
        if self.lost or value == self.is_master:
            return
        self.is_master = value
        for cb in self._listeners:
            try:
                cb(value)
            except Exception:
                log.failure("mastership listener {cb!r} failed", cb=cb)

    def mark_lost(self, tally: Tally | None) -> None:
        if self.lost:
            return
        self.last = tally
        self.set_master(False)
        self.lost = True


def attach_runner(runner: Any, mastership: Mastership) -> None:
    """Make a ``maintd.daemon.round.RoundRunner`` submit jobs only while master.

    Each round's context gets ``submitting = mastership.is_master`` at its
    start, and the context of the round in progress is switched to
    ``submitting = False`` as soon as mastership becomes uncertain or is lost
    (never back on mid-round).
    """
    current: list[Any] = [None]
    make_context = runner.context

    def context(number: int) -> Any:
        ctx = make_context(number)
        ctx.mastership = mastership
        current[0] = ctx
        return ctx

    def changed(is_master: bool) -> None:
        if not is_master and current[0] is not None:
            current[0].submitting = False

    runner.submitting = lambda: mastership.is_master
    runner.context = context
    mastership.on_change(changed)


# --------------------------------------------------------------------------
# startup


def check_at_startup(
    config: Any,
    *,
    sleep: Callable[[float], None] = time.sleep,
    client: BlockingNodedClient | None = None,
    resolve: Callable[[str], str] = socket.gethostbyname,
    progress: TextIO | None = None,
) -> Mastership:
    """Verify mastership by vote before the daemon starts.

    Returns a :class:`Mastership`; raises :class:`NotMasterError` (exit 11) or
    :class:`SetupError` (exit 12).  Skipped with ``--simulate`` and with
    ``--no-voting --yes-do-it`` (``--no-voting`` alone is a usage error of
    the options).
    """
    me = own_hostname(config)
    if getattr(config, "simulate", False):
        log.info("simulated cluster: master vote skipped")
        return Mastership(hostname=me, verified=False)
    if config.no_voting:
        log.warn(
            "--no-voting --yes-do-it: master vote skipped, mastership not verified and"
            " not re-checked; make sure {me} really is the master",
            me=me,
        )
        return Mastership(hostname=me, verified=False)

    nodes = voting.read_ssconf(config.ssconf_dir)
    if nodes.master is not None and voting.normalize_name(nodes.master) != voting.normalize_name(me):
        raise NotMasterError(
            f"{me} is not the master: {os.path.join(config.ssconf_dir, 'ssconf_master_node')}"
            f" names {nodes.master}"
        )
    if client is None:
        client = BlockingNodedClient(NodedTLS.load(config.noded_cert), port=config.noded_port)
    endpoints = voting.resolve_endpoints(nodes, resolve)

    def on_retry(tally: Tally, attempt: int) -> None:
        # twistd opens its log only after makeService: tell the operator now
        if progress is not None:
            progress.write(
                f"ganeti-maintd: master vote undecided ({tally.describe()}); asking again in"
                f" {voting.VOTING_RETRY_INTERVAL:g}s (retry {attempt}/{voting.VOTING_RETRIES})\n"
            )
            progress.flush()

    tally = voting.verify_by_vote(
        lambda: client.gather(endpoints), me, sleep=sleep, on_retry=on_retry
    )
    log.info("master vote won: {tally}", tally=tally.describe())
    return Mastership(hostname=me, verified=True, last=tally)


def check_at_startup_or_exit(
    config: Any, *, stderr: TextIO | None = None, **kwargs: Any
) -> Mastership:
    """:func:`check_at_startup`, or the reason on stderr and ``SystemExit(11|12)``."""
    out = stderr if stderr is not None else sys.stderr
    try:
        return check_at_startup(config, progress=out, **kwargs)
    except (NotMasterError, SetupError) as e:
        code = EXIT_NOTMASTER if isinstance(e, NotMasterError) else EXIT_NODESETUP_ERROR
        out.write(f"ganeti-maintd: refusing to start: {e} (exit status {code})\n")
        out.flush()
        raise SystemExit(code) from None


# --------------------------------------------------------------------------
# runtime


def exit_after_shutdown(reactor: Any, status: int) -> None:
    """Stop the reactor and make the process exit with ``status``.

    twistd offers no exit status: after the reactor stops it removes the pid
    file, returns, and the interpreter exits 0.  An ``atexit`` handler runs
    after all that (services stopped, pid file gone, log observers have
    written and flushed every event), flushes the standard streams and ends
    the process with ``os._exit(status)`` — the only way to set the status
    that late.  ``os._exit`` there skips only the remaining interpreter
    tear-down.
    """

    def _exit() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(status)

    atexit.register(_exit)
    if reactor.running:
        reactor.stop()


Vote = Callable[[], Awaitable[Tally]]

MIN_CHECK_INTERVAL = 0.1
"""Seconds; a zero interval would make the LoopingCall spin."""


class MastershipService(service.Service):
    """Re-verify mastership every ``interval`` seconds; exit 11 when lost."""

    name = "mastership"

    def __init__(
        self,
        mastership: Mastership,
        vote: Vote,
        *,
        clock: Any,
        interval: float = 60.0,
        retries: int = voting.VOTING_RETRIES,
        retry_interval: float = voting.VOTING_RETRY_INTERVAL,
        exit: Callable[[int], None] | None = None,
    ) -> None:
        self.mastership = mastership
        self._vote = vote
        self._clock = clock
        self._interval = interval
        self._retries = retries
        self._retry_interval = retry_interval
        self._exit = exit if exit is not None else (lambda status: exit_after_shutdown(clock, status))
        self._loop: task.LoopingCall | None = None
        self._loop_done: defer.Deferred[Any] | None = None
        self._current: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop_done = self._loop.start(self._interval, now=False)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        current = self._current
        if current is not None:
            current.cancel()  # a retry wait or a vote in flight: nothing to keep
        return defer.succeed(None)

    def _tick(self) -> defer.Deferred[None]:
        d = defer.Deferred.fromCoroutine(self.check())
        self._current = d

        def done(result: object) -> None:
            self._current = None

        d.addBoth(done)  # never let a failure stop the LoopingCall
        return d

    async def check(self) -> None:
        """One verification: a vote, repeated while undecided."""
        if self.mastership.lost:
            return
        for attempt in range(self._retries + 1):
            try:
                tally = await self._vote()
            except defer.CancelledError:
                return
            except Exception as e:
                log.error(
                    "mastership re-check failed, keeping the current state: {error}",
                    error=str(e) or type(e).__name__,
                )
                return
            self.mastership.last = tally
            verdict = tally.verdict
            if verdict is Verdict.WON:
                if not self.mastership.is_master:
                    log.info("mastership confirmed again, resuming job submission: {tally}",
                             tally=tally.describe())
                self.mastership.set_master(True)
                log.debug("mastership confirmed: {tally}", tally=tally.describe())
                return
            if verdict is Verdict.LOST:
                self._lose(f"the master vote is lost: {tally.describe()}", tally)
                return
            if attempt >= self._retries:
                self._lose(
                    f"the master vote stayed undecided after {attempt + 1} attempts:"
                    f" {tally.describe()}",
                    tally,
                )
                return
            if self.mastership.is_master:
                log.warn("mastership uncertain, pausing job submission: {tally}", tally=tally.describe())
            self.mastership.set_master(False)
            try:
                await task.deferLater(self._clock, self._retry_interval, lambda: None)
            except defer.CancelledError:
                return

    def _lose(self, why: str, tally: Tally) -> None:
        log.critical(
            "{me} is no longer the master ({why}); job submission stopped, exiting with"
            " status {status} so the daemon runs on the new master",
            me=self.mastership.hostname,
            why=why,
            status=EXIT_NOTMASTER,
        )
        self.mastership.mark_lost(tally)
        self._exit(EXIT_NOTMASTER)


def runtime_vote(config: Any, reactor: Any, me: str, *, client: TwistedNodedClient | None = None) -> Vote:
    """The vote of the periodic check: re-reads ssconf (nodes come and go) each time."""
    if client is None:
        client = TwistedNodedClient(reactor, NodedTLS.load(config.noded_cert), port=config.noded_port)
    noded = client

    async def vote() -> Tally:
        nodes = voting.read_ssconf(config.ssconf_dir)
        endpoints: dict[str, tuple[str, int] | str | None] = {}
        for node in nodes.nodes:
            ip = nodes.addresses.get(node)
            if ip is None:
                try:
                    ip = await reactor.resolve(node)
                except Exception as e:
                    log.warn("node {node}: cannot resolve: {error}", node=node, error=str(e))
            endpoints[node] = ip
        return Tally(me=me, ballots=tuple(await noded.gather(endpoints)))

    return vote


def mastership_service(config: Any, mastership: Mastership, reactor: Any) -> MastershipService | None:
    """The periodic re-check for the daemon, or None when voting is skipped."""
    if not mastership.verified:
        return None
    return MastershipService(
        mastership,
        runtime_vote(config, reactor, mastership.hostname),
        clock=reactor,
        interval=max(float(config.master_check_interval), MIN_CHECK_INTERVAL),
    )
