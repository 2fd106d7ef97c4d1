"""Keep-alive HTTP/1.1 ``GET`` connections to the nodes, kept between rounds.

A round asks every node's agent for its report.  Opening a connection (TCP
and a TLS handshake) costs both ends far more CPU than the request itself,
so the agent client keeps one idle connection per node
(:class:`ConnectionPool`) and sends the next round's request over it: later
rounds skip TCP and TLS entirely.  The TLS session of a kept connection is
the one verified and pinned when it was opened.

:class:`Connection` is a small HTTP/1.1 client (one request at a time on
one raw reactor connection: cheaper than an ``Agent`` per request) that
reads a response framed by ``Content-Length``, chunked, or ended by the
close of the connection, with bounded head, chunk lines and body.  A
connection is kept only when the response was framed and neither side said
``Connection: close``.

A kept connection that turns out to be closed before any byte of the answer
arrived (the agent restarted, or closed it as idle at that moment) fails
with :class:`StaleConnection`: ``GET`` is idempotent, the caller retries
once on a new connection, and the node does not count as unreachable for it.
An idle connection is closed after ``idle_timeout`` seconds; the agents keep
theirs open longer (``maintd.agent.http.IDLE_TIMEOUT``), so the client
closes first and races stay rare.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from maintd.common import tlsproto

log = Logger()

#: Seconds an idle connection is kept (a round every 300 s by default).
IDLE_TIMEOUT = 900.0
#: Seconds idle before a kept connection's first TCP keepalive probe.
KEEPALIVE_IDLE = 60
#: Largest status line + headers of an answer (bytes).
MAX_HEAD = 16 * 1024
#: Longest chunk-size or trailer line of a chunked answer (bytes).
MAX_LINE = 1024


class StaleConnection(Exception):
    """A kept connection was closed before any byte of the answer came."""


class TooLarge(Exception):
    """The answer's body is larger than the bound."""


class BadResponse(Exception):
    """The answer is not HTTP/1.x as this client reads it; says why."""


class PeerRefused(Exception):
    """The TLS peer is not the one expected (``check_peer`` said why)."""


@implementer(IHandshakeListener)
class Connection(protocol.Protocol):
    """One connection to one node, one ``GET`` at a time (see the module doc)."""

    def __init__(self, host: bytes, max_body: int) -> None:
        self.host = host
        self.max_body = max_body
        #: The answer of the request in progress: ``(status, body)``.
        self.pending: defer.Deferred[tuple[int, bytes]] | None = None
        #: Answers completed on this connection.
        self.answers = 0
        #: Whether the last answer leaves the connection usable for another.
        self.reusable = False
        self.lost = False
        #: Called once the TLS handshake is done (HTTPS only).
        self.on_handshake: Callable[[], None] | None = None
        #: Over TLS: called with the transport once the handshake is done,
        #: before anything is sent; a string refuses the peer (the reason).
        self.check_peer: Callable[[Any], str | None] | None = None
        self.tls = False
        #: Called when the connection is lost (the pool forgets it).
        self.on_lost: Callable[[Connection], None] | None = None
        self.connector: Any = None
        #: (host, port) while kept by a pool.
        self.key: tuple[str, int] = ("", 0)
        self._first_path: bytes | None = None
        self._reset()

    # -- requests ---------------------------------------------------------

    def _reset(self) -> None:
        self._buf = b""
        self._head_done = False
        self._code = 0
        self._keep = False
        self._mode = ""  # "length", "chunked" or "close"
        self._left = 0
        self._chunk_state = "size"
        self._body: list[bytes] = []
        self._size = 0
        self._got_bytes = False

    def _new_pending(self) -> defer.Deferred[tuple[int, bytes]]:
        self._reset()
        self.reusable = False
        d: defer.Deferred[tuple[int, bytes]] = defer.Deferred(self._cancel)
        self.pending = d
        return d

    def _write_request(self, path: bytes) -> None:
        assert self.transport is not None
        # One write: a round sends a thousand of these.
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n\r\n"
                             % (path, self.host))

    def first_request(self, path: bytes) -> defer.Deferred[tuple[int, bytes]]:
        """The answer to ``path``, sent as soon as the connection is made."""
        self._first_path = path
        return self._new_pending()

    def request(self, path: bytes) -> defer.Deferred[tuple[int, bytes]]:
        """The answer to ``path`` on this (kept, idle) connection."""
        if self.pending is not None:
            raise RuntimeError("connection busy")
        d = self._new_pending()
        if self.lost or self.transport is None:
            self.pending = None
            return defer.fail(StaleConnection())
        self._write_request(path)
        return d

    def _cancel(self, _: Any) -> None:
        self.pending = None
        self.reusable = False
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        elif self.connector is not None:
            try:
                self.connector.stopConnecting()
            except error.NotConnectingError:
                pass

    def close(self) -> None:
        """Close the connection (nothing pending on it)."""
        if self.transport is not None and not self.lost:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None and not self.lost:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- protocol ---------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        if not self.tls:
            self._send_first()

    def _send_first(self) -> None:
        if self._first_path is not None:
            self._write_request(self._first_path)
            self._first_path = None

    def handshakeCompleted(self) -> None:  # noqa: N802
        if self.on_handshake is not None:
            self.on_handshake()
        refused = self.check_peer(self.transport) if self.check_peer is not None else None
        if refused is not None:
            self._fail(PeerRefused(refused))
            return
        # the request goes out only to a peer that passed the check
        self._send_first()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.pending is None:
            # nothing asked: an agent does not talk unasked; drop it
            self.reusable = False
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except (BadResponse, TooLarge) as e:
            self._fail(e)

    def _parse(self) -> None:
        while self.pending is not None:
            if not self._head_done:
                if not self._parse_head():
                    return
                continue
            if self._mode == "length":
                take = self._buf[:self._left]
                self._buf = self._buf[len(take):]
                self._left -= len(take)
                self._add(take)
                if self._left:
                    return
                self._finish()
            elif self._mode == "chunked":
                if not self._parse_chunks():
                    return
            else:  # until the connection closes
                self._add(self._buf)
                self._buf = b""
                return

    def _parse_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise BadResponse(f"answer head longer than {MAX_HEAD} bytes")
            return False
        head, self._buf = self._buf[:end], self._buf[end + 4:]
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
            raise BadResponse(f"not an HTTP answer: {lines[0][:60]!r}")
        try:
            code = int(status[1])
        except ValueError:
            raise BadResponse(f"bad status line {lines[0][:60]!r}") from None
        if 100 <= code < 200:
            return True  # an interim answer: the real one follows
        length: int | None = None
        chunked = False
        keep = status[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    raise BadResponse(f"bad Content-Length {value[:30]!r}") from None
                if n < 0 or (length is not None and n != length):
                    raise BadResponse(f"bad Content-Length {value[:30]!r}")
                length = n
            elif name == b"transfer-encoding":
                chunked = value.split(b",")[-1].strip() == b"chunked"
                if not chunked:
                    raise BadResponse(f"unsupported Transfer-Encoding {value[:30]!r}")
            elif name == b"connection" and b"close" in value:
                keep = False
        self._code = code
        self._head_done = True
        if code in (204, 304):
            self._mode, self._left = "length", 0
        elif chunked:
            self._mode = "chunked"
        elif length is not None:
            if length > self.max_body:
                raise TooLarge()
            self._mode, self._left = "length", length
        else:
            self._mode, keep = "close", False
        self._keep = keep
        return True

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_LINE:
                raise BadResponse(f"chunk line longer than {MAX_LINE} bytes")
            return None
        line, self._buf = self._buf[:end], self._buf[end + 2:]
        return line

    def _parse_chunks(self) -> bool:
        """Read chunks; False when more data is needed."""
        while True:
            if self._chunk_state == "size":
                line = self._line()
                if line is None:
                    return False
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadResponse(f"bad chunk size {line[:30]!r}") from None
                if size < 0:
                    raise BadResponse(f"bad chunk size {line[:30]!r}")
                if size == 0:
                    self._chunk_state = "trailer"
                else:
                    if self._size + size > self.max_body:
                        raise TooLarge()
                    self._chunk_state, self._left = "data", size
            elif self._chunk_state == "data":
                take = self._buf[:self._left]
                self._buf = self._buf[len(take):]
                self._left -= len(take)
                self._add(take)
                if self._left:
                    return False
                self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(self._buf) < 2:
                    return False
                if self._buf[:2] != b"\r\n":
                    raise BadResponse("chunk not followed by CRLF")
                self._buf = self._buf[2:]
                self._chunk_state = "size"
            else:  # trailer lines up to an empty one
                line = self._line()
                if line is None:
                    return False
                if not line:
                    self._finish()
                    return True

    def _add(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._size > self.max_body:
            raise TooLarge()
        self._body.append(data)

    def _finish(self) -> None:
        d, self.pending = self.pending, None
        self.answers += 1
        # bytes after the answer: not an answer to anything we asked
        self.reusable = self._keep and not self._buf and not self.lost
        if not self.reusable:
            self.close()
        if d is not None:
            d.callback((self._code, b"".join(self._body)))

    def _fail(self, reason: Any) -> None:
        d, self.pending = self.pending, None
        self.reusable = False
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        if d is not None:
            d.errback(reason)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.lost = True
        self.reusable = False
        if self.on_lost is not None:
            self.on_lost(self)
        if self.pending is None:
            return
        if self._head_done and self._mode == "close":
            self._finish()
        elif self.answers and not self._got_bytes:
            self._fail(StaleConnection())
        else:
            self._fail(reason)

    def failed(self, reason: Any) -> None:
        """The connection could not be made."""
        self.lost = True
        self._fail(reason)


class _Factory(protocol.ClientFactory):
    """Connects one :class:`Connection`; quiet (no start/stop log events)."""

    noisy = False

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def buildProtocol(self, addr: Any) -> Connection:  # noqa: N802
        return self.conn

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
        self.conn.failed(reason)


def _tcp_keepalive(transport: Any) -> None:
    """TCP keepalives on a kept connection: a probe after a minute idle
    keeps a stateful firewall's or NAT's entry alive, and a connection
    whose peer is gone without a word is found closed (about two minutes)
    instead of costing a timeout next round."""
    tcp = getattr(transport, "transport", transport)  # under TLS: the TCP one
    try:
        tcp.setTcpKeepAlive(1)
        sock = tcp.getHandle()
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", 15),
                            ("TCP_KEEPCNT", 4)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except (AttributeError, OSError):  # not a TCP socket (tests), or no such option
        pass


class _TLSFactory(TLSMemoryBIOFactory):
    """TLS around one :class:`Connection`: it writes each request at once,
    so without Twisted's default aggregation of small writes (one more
    timer and reactor turn per connection), and without Twisted's
    per-connection copying of interface declarations
    (:mod:`maintd.common.tlsproto`)."""

    protocol = tlsproto.ClientTLSProtocol


class ConnectionPool:
    """At most one idle :class:`Connection` kept per (host, port)."""

    def __init__(self, reactor: Any, *, max_idle: int, max_body: int,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._reactor = reactor
        self.max_idle = max_idle
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        #: Idle connections and since when, oldest first (insertion order).
        self._idle: dict[tuple[str, int], tuple[Connection, float]] = {}
        #: One timer for all: when the oldest idle connection expires.
        self._sweep: Any = None
        #: Requests sent over a kept connection; kept connections found
        #: closed and retried on a new one; connections opened.
        self.reused = 0
        self.retried = 0
        self.opened = 0

    def __len__(self) -> int:
        return len(self._idle)

    def take(self, host: str, port: int) -> Connection | None:
        """The idle connection to ``host:port``, if one is kept (now busy)."""
        entry = self._idle.pop((host, port), None)
        if entry is None or entry[0].lost:
            return None
        conn = entry[0]
        conn.on_lost = None
        self.reused += 1
        return conn

    def put(self, host: str, port: int, conn: Connection) -> None:
        """Keep ``conn`` (its answer complete) for the next request, or close it."""
        key = (host, port)
        if (not conn.reusable or conn.lost or key in self._idle
                or len(self._idle) >= self.max_idle):
            conn.close()
            return
        if conn.key != key:  # newly kept
            conn.key = key
            _tcp_keepalive(conn.transport)
        self._idle[key] = (conn, self._reactor.seconds())
        conn.on_lost = self._forget
        self._arm()

    def _forget(self, conn: Connection) -> None:
        """A kept connection was closed (by the agent)."""
        entry = self._idle.get(conn.key)
        if entry is not None and entry[0] is conn:
            del self._idle[conn.key]

    def _arm(self) -> None:
        if (self._sweep is not None and self._sweep.active()) or not self._idle:
            return
        _, since = next(iter(self._idle.values()))
        delay = max(since + self.idle_timeout - self._reactor.seconds(), 0.0)
        self._sweep = self._reactor.callLater(delay, self._expire)

    def _expire(self) -> None:
        """Close the connections idle for ``idle_timeout`` seconds."""
        self._sweep = None
        now = self._reactor.seconds()
        while self._idle:
            key, (conn, since) = next(iter(self._idle.items()))
            if since + self.idle_timeout > now:
                break
            del self._idle[key]
            conn.on_lost = None
            conn.close()
        self._arm()

    def connect(self, host: str, port: int, path: str, tls: Any = None,
                on_handshake: Callable[[], None] | None = None,
                check_peer: Callable[[Any], str | None] | None = None) -> Connection:
        """A new connection to ``host:port`` that sends ``GET path`` once
        made, over TLS once the handshake is done and ``check_peer`` passed
        (its answer: ``conn.pending``); ``tls``: an
        ``IOpenSSLClientConnectionCreator`` (None: plain HTTP)."""
        conn = Connection(host.encode("ascii"), self.max_body)
        conn.first_request(path.encode("ascii"))
        conn.on_handshake = on_handshake
        conn.check_peer = check_peer
        conn.tls = tls is not None
        factory = _Factory(conn)
        # no connect timer of Twisted's own: the caller's timeout covers
        # connecting too (and cancels the attempt)
        wrapped = factory if tls is None else _TLSFactory(tls, True, factory)
        conn.connector = self._reactor.connectTCP(host, port, wrapped, timeout=None)
        self.opened += 1
        return conn

    def close(self) -> defer.Deferred[None]:
        """Close every idle connection; fires once they are closed (aborted:
        nothing is pending on them, and an agent that no longer answers
        must not hold up a stopping daemon)."""
        waits: list[defer.Deferred[None]] = []
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        idle, self._idle = self._idle, {}
        for conn, _ in idle.values():
            if conn.lost or conn.transport is None:
                continue
            d: defer.Deferred[None] = defer.Deferred()
            conn.on_lost = lambda _c, d=d: d.callback(None)  # type: ignore[misc]
            conn.abort()
            waits.append(d)
        return defer.gatherResults(waits).addCallback(lambda _: None)
