"""Limits of the HTTP API's connections: request timeout, idle timeout, a cap.

The API is read-only and cheap, but every connection costs a file
descriptor, and the daemon needs descriptors for its own work (one per node
asked, the state file).  So:

- **request timeout** (``--http-header-timeout``): a request (request line,
  headers, body) must arrive whole within this many seconds of its first
  byte, or of the connection being opened.  The deadline is not pushed back
  by more bytes arriving, so a client trickling a header a byte at a time
  ("slowloris") is dropped as surely as a silent one.
- **idle timeout** (``--http-idle-timeout``): a keep-alive connection without
  a request for this long is closed (twisted.web's own ``HTTPFactory.timeOut``
  / ``TimeoutMixin``, which the channel already resets on every read).
- **connection cap** (``--http-max-connections``): when a new connection
  would exceed it, the *least recently active* connection is closed to make
  room (:class:`ConnectionGuard`).  A connection counts as active when it
  opens and when it completes a request, so slow or idle connections are the
  first to go and a client that sends its request straight away is always
  answered, whatever path it asks for: ``/1/status`` keeps answering while
  the cap is hit by others.  One warning line says so, at most once a
  minute, with the count of connections closed since the last one.

twisted.policies' ``LimitTotalConnectionsFactory`` / ``LimitConnectionsByPeer``
refuse the *new* connection instead (a well-behaved client would be the one
turned away) and wrap every protocol (a cost on the fast path), so the cap
is kept here, on the channel's own connection/request events.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.logger import Logger

log = Logger()

#: Defaults of the daemon options (also in maintd.daemon.config).
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HEADER_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 60.0
#: Seconds between two "connection limit reached" warnings.
LOG_INTERVAL = 60.0


@attrs.frozen
class HttpLimits:
    """The API's connection limits; a timeout of 0 (or None) means none."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float | None = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT

    @classmethod
    def from_config(cls, config: Any) -> HttpLimits:
        return cls(
            max_connections=config.http_max_connections,
            header_timeout=config.http_header_timeout or None,
            idle_timeout=config.http_idle_timeout or None,
        )


class Evictable(Protocol):
    def evict(self) -> None: ...

    def peer(self) -> str: ...


class ConnectionGuard:
    """The open connections of one site, least recently active first."""

    def __init__(self, limit: int, clock: Any, log_interval: float = LOG_INTERVAL, *,
                 what: str = "HTTP API", option: str = "--http-max-connections") -> None:
        """``what``, ``option``: whose connections and which option sets
        the cap, for the warning (the node agent's cap is no option)."""
        if limit < 1:
            raise ValueError(f"connection limit must be at least 1, not {limit}")
        self.limit = limit
        self.what = what
        self.option = f" ({option})" if option else ""
        self.clock = clock
        self.log_interval = log_interval
        # dict: insertion-ordered, O(1) move-to-end; values unused
        self._open: dict[Evictable, None] = {}
        #: Connections closed to make room, in all.
        self.evicted = 0
        #: Connections closed by the request timeout, in all.
        self.timed_out = 0
        self._unreported = 0
        self._last_report: float | None = None

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, conn: Evictable) -> None:
        """A new connection; closes the least recently active one when full."""
        while len(self._open) >= self.limit:
            victim = next(iter(self._open))
            del self._open[victim]
            self.evicted += 1
            self._unreported += 1
            self._report(victim)
            victim.evict()
        self._open[conn] = None

    def active(self, conn: Evictable) -> None:
        """``conn`` completed a request: it moves to the back of the queue."""
        if conn in self._open:
            del self._open[conn]
            self._open[conn] = None

    def closed(self, conn: Evictable) -> None:
        self._open.pop(conn, None)

    def _report(self, victim: Evictable) -> None:
        now = self.clock.seconds()
        if self._last_report is not None and now - self._last_report < self.log_interval:
            return
        log.warn(
            "{what}: {limit} connections open{option}; closing the least "
            "recently active ones to make room ({count} closed since the last message, the "
            "latest from {peer})",
            what=self.what,
            option=self.option,
            limit=self.limit,
            count=self._unreported,
            peer=victim.peer(),
        )
        self._last_report = now
        self._unreported = 0
