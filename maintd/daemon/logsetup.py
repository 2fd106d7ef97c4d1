"""Logging for the daemon: ``twisted.logger`` events, debug only with ``-d``.

Every module logs structured events through its own ``Logger()`` with
named-field format strings.  twistd sets up the output (stdout with ``-n``,
``twistd.log``, syslog, ``--logger``) *after* ``makeService`` and before the
services start, and its observers print every level.  :class:`LogLevelService`
therefore wraps the observers present when it starts in a level filter:
debug events are dropped unless ``-d`` was given.  It is the first child of
the daemon's ``MultiService`` and undoes the wrapping when stopped.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.application import service
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
)
from zope.interface import implementer

log_namespace = "maintd"


def level_predicate(debug: bool) -> LogLevelFilterPredicate:
    """The filter for the daemon's log: debug events pass only with ``-d``."""
    return LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug if debug else LogLevel.info)


#: Format strings of Twisted's per-connection chatter ("Starting factory
#: <...>" for every outgoing connection, whatever the factory class), shown
#: only with ``-d``: the daemon opens one connection per node per round.
QUIET_FORMATS = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})


#: Twisted's legacy "<factory> starting on <port>" line of the simulator's
#: per-node monds (one per node; maintd.sim.mond names them
#: "sim mond of NODE at ADDRESS"), shown only with ``-d``: the simulator
#: logs one summary line instead.
DEBUG_TEXT = re.compile(r"sim (?:mond|agent) of \S+ at \S+ (?:\(TLS\) )?starting on \d+")


@implementer(ILogFilterPredicate)
class QuietConnectionsPredicate:
    """Drops Twisted's factory start/stop events below warning level, and the
    simulator monds' port start lines."""

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        fmt = event.get("log_format")
        if fmt in QUIET_FORMATS:
            level = event.get("log_level")
            if level is None or level < LogLevel.warn:
                return PredicateResult.no
        elif fmt == "{log_text}" and DEBUG_TEXT.fullmatch(str(event.get("log_text", ""))):
            return PredicateResult.no
        return PredicateResult.maybe


class LogLevelService(service.Service):
    """Filters the log observers of ``publisher`` by level while running."""

    name = "log-level"

    def __init__(self, debug: bool, publisher: LogPublisher = globalLogPublisher) -> None:
        self.debug = debug
        self.predicate = level_predicate(debug)
        self._publisher = publisher
        self._wrapped: list[tuple[ILogObserver, ILogObserver]] = []

    def _observers(self) -> list[Any]:
        # LogPublisher has no public way to list its observers; _observers has
        # been stable since twisted.logger appeared.  Without it we filter
        # nothing (debug events are then shown), which is harmless.
        return list(getattr(self._publisher, "_observers", []))

    def startService(self) -> None:
        super().startService()
        if self.debug:
            return
        for obs in self._observers():
            if isinstance(obs, FilteringLogObserver):
                continue
            wrapper = FilteringLogObserver(obs, [self.predicate, QuietConnectionsPredicate()])
            self._publisher.removeObserver(obs)
            self._publisher.addObserver(wrapper)
            self._wrapped.append((obs, wrapper))

    def stopService(self) -> None:
        for obs, wrapper in self._wrapped:
            self._publisher.removeObserver(wrapper)
            self._publisher.addObserver(obs)
        self._wrapped = []
        super().stopService()
