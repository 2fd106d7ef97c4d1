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


@implementer(ILogFilterPredicate)
class QuietConnectionsPredicate:
    """Drops Twisted's factory start/stop events below warning level."""

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        if event.get("log_format") in QUIET_FORMATS:
            level = event.get("log_level")
            if level is None or level < LogLevel.warn:
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
