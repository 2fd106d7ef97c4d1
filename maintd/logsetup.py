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
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    globalLogPublisher,
)

log_namespace = "maintd"


#: Chatty namespaces shown only with ``-d`` (every pooled HTTP connection
#: logs "Starting factory" / "Stopping factory" at info level).
QUIET_NAMESPACES = ("twisted.web.client._HTTP11ClientFactory",)


def level_predicate(debug: bool) -> LogLevelFilterPredicate:
    """The filter for the daemon's log: debug events pass only with ``-d``."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug if debug else LogLevel.info)
    if not debug:
        for namespace in QUIET_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, LogLevel.warn)
    return predicate


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
            wrapper = FilteringLogObserver(obs, [self.predicate])
            self._publisher.removeObserver(obs)
            self._publisher.addObserver(wrapper)
            self._wrapped.append((obs, wrapper))

    def stopService(self) -> None:
        for obs, wrapper in self._wrapped:
            self._publisher.removeObserver(wrapper)
            self._publisher.addObserver(obs)
        self._wrapped = []
        super().stopService()
