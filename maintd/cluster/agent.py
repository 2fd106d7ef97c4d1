"""Client of the node agents (``ganeti-maintd-agent``, port 1817): signed
self-diagnose reports.

Each node's agent is asked on the node's primary IP, over TLS pinned to the
cluster certificate (``--agent-cert``, ``server.pem``; ``--agent-plain-http``
for test agents).  Its answer is a signed envelope (see
:mod:`maintd.common.signing`) around a mond-style report.  A report is used
only when its signature matches the cluster HMAC key and its time is within
the window; an unsigned one only with ``--allow-unsigned-reports``.

Every node's outcome is counted in :class:`ReportCounters` (per node:
``ok``, ``unreachable``, ``invalid``, ``bad_signature`` -- wrong, stale or
missing signature -- and ``collector_failed`` -- the agent says its diagnose
command failed), for the log and a Prometheus exporter.  Only an ``ok``
report can become an incident.

Bounded concurrency is :class:`MondClient`'s.  One connection per node is
kept between rounds (:mod:`maintd.cluster.keepalive`): later rounds skip
TCP and TLS; a kept connection found closed is retried once on a new one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _lib
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from maintd.cluster import keepalive
from maintd.cluster.model import Node
from maintd.cluster.mond import MAX_BODY, DiagnoseReport, MondClient, MondError, validate_diagnose
from maintd.common import signing, strictjson

log = Logger()
_DER = Encoding.DER

DEFAULT_PORT = 1817
#: TLS handshakes in progress at most.  Handshakes cost CPU on both sides;
#: a thousand started at once all finish late together (each node's timeout
#: runs out before any answer on a busy host).  A node queued for a slot
#: still gets half its timeout once its connection starts (:class:`_Deadline`);
#: a node that completed its handshake and is slow to answer holds no
#: handshake slot, one that cannot complete it holds its slot for ``stall``
#: seconds at most (then waits without it).  A kept connection
#: (:mod:`maintd.cluster.keepalive`) needs no slot.
HANDSHAKES = 64
DIAGNOSE_PATH = "/1/report/node/diagnose"
OUTCOMES = ("ok", "unreachable", "invalid", "bad_signature", "collector_failed")


class AgentError(MondError):
    """One node's agent gave no usable report; ``outcome`` says which kind."""

    def __init__(self, node: str, message: str, outcome: str = "unreachable") -> None:
        Exception.__init__(self, f"agent on {node}: {message}")
        self.node = node
        self.outcome = outcome


class ReportCounters:
    """Per-node counts of report outcomes since the daemon started.

    Read by other threads (an exporter) through :meth:`snapshot`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {}

    def add(self, node: str, outcome: str) -> None:
        with self._lock:
            per = self._counts.setdefault(node, dict.fromkeys(OUTCOMES, 0))
            per[outcome] = per.get(outcome, 0) + 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{node: {outcome: count}}`` (every outcome present, zeros included)."""
        with self._lock:
            return {n: dict(c) for n, c in self._counts.items()}

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(OUTCOMES, 0)
        for per in self.snapshot().values():
            for k, v in per.items():
                out[k] = out.get(k, 0) + v
        return out


class _PinnedAgents:
    """TLS to the node agents, pinned to the cluster certificate.

    The context does not build or verify a certificate chain (Ganeti's
    ``server.pem`` is self-signed: no chain could pass); instead, once the
    handshake is done and before anything is sent, :meth:`check` compares the
    certificate the agent presented, byte for byte (DER), with the pinned
    one.  The handshake itself proves that the agent holds that
    certificate's key.  A resumed session is one made with a checked agent.
    """

    def __init__(self, certificate: Any, source: str) -> None:
        self.pinned = certificate.public_bytes(_DER)
        self.source = source
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION)
        ctx.set_verify(SSL.VERIFY_NONE)
        self.ctx = ctx

    @classmethod
    def from_file(cls, path: str) -> _PinnedAgents:
        from maintd.cluster.rapi.tls import load_certificate

        return cls(load_certificate(path), path)

    def check(self, transport: Any) -> str | None:
        try:
            presented = transport.getHandle().get_peer_certificate()
            # the certificate's DER bytes as OpenSSL holds them (what
            # ``to_cryptography().public_bytes(DER)`` returns too, without
            # parsing and encoding it again for every connection)
            der = None if presented is None else crypto.dump_certificate(
                crypto.FILETYPE_ASN1, presented)
        except Exception as e:  # no TLS handle: not an agent we can trust
            return f"no peer certificate ({e})"
        if der != self.pinned:
            return f"node agent certificate is not the pinned one from {self.source}"
        return None


@implementer(IOpenSSLClientConnectionCreator)
class _Resuming:
    """A client TLS connection to one node that offers the session of the
    previous connection to it (TLS session tickets): resumed handshakes skip
    the certificate exchange and its checks.  A server can only resume a
    session it issued, i.e. one whose certificate was verified and pinned
    when it was made."""

    def __init__(self, ctx: SSL.Context, session: Any) -> None:
        self.ctx = ctx
        self.session = session

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:  # noqa: N802
        # (Twisted's TLS factory sets the client state and the app data)
        conn = SSL.Connection(self.ctx, None)
        if self.session is not None:
            conn.set_session(self.session)
        return conn


class _Deadline:
    """A node's timeout: ``seconds`` from when the round asks it, but at
    least ``grace`` seconds after each step of its own request begins (its
    connection attempt, its request going out after the TLS handshake), and
    never while it waits for one of our handshake slots.

    A node the daemon gets to late -- queued behind other nodes' TLS
    handshakes, as in the first round of a large cluster -- is not cut
    short by our own delay; a silent node asked first costs one timeout.
    """

    def __init__(self, reactor: Any, seconds: float, grace: float) -> None:
        self._reactor = reactor
        self.grace = grace
        self.at = reactor.seconds() + seconds
        self.expired = False
        self._held = False
        self._done = False
        self._call: Any = None
        self._expire: Callable[[], object] | None = None

    def start(self, expire: Callable[[], object]) -> None:
        self._expire = expire
        self._schedule()

    def _schedule(self) -> None:
        if self.expired or self._done or self._expire is None:
            return
        delay = max(self.at - self._reactor.seconds(), 0.0)
        if self._call is not None and self._call.active():
            # only ever later: a reset to the same time (rounded a hair
            # sooner) costs a search through all the reactor's timers
            if self._call.getTime() < self.at:
                self._call.reset(delay)
        else:
            self._call = self._reactor.callLater(delay, self._fire)

    def hold(self) -> None:
        """The request waits on our side: it does not expire meanwhile."""
        self._held = True

    def progress(self) -> None:
        """A step of the request begins: at least ``grace`` seconds more."""
        self._held = False
        self.at = max(self.at, self._reactor.seconds() + self.grace)
        self._schedule()

    def _fire(self) -> None:
        self._call = None
        if self._held:
            return  # decided once it is under way again (progress)
        self.expired = True
        assert self._expire is not None
        self._expire()

    def cancel(self) -> None:
        self._done = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class AgentClient(MondClient):
    """Asks nodes' agents for signed self-diagnose reports."""

    Error = AgentError

    def __init__(
        self,
        reactor: Any,
        *,
        key: bytes | None,
        port: int = DEFAULT_PORT,
        timeout: float = 10.0,
        parallel: int = 1024,
        tls: Any = None,
        allow_unsigned: bool = False,
        window: float = signing.DEFAULT_WINDOW,
        wallclock: Callable[[], float] = time.time,
        counters: ReportCounters | None = None,
        idle_timeout: float = keepalive.IDLE_TIMEOUT,
        handshakes: int = HANDSHAKES,
    ) -> None:
        super().__init__(reactor, port=port, timeout=timeout, parallel=parallel,
                         diagnose_path=DIAGNOSE_PATH)
        self.key = key
        self._tls = tls
        self.scheme = "http" if tls is None else "https"
        self.allow_unsigned = allow_unsigned
        self.window = window
        self.wallclock = wallclock
        self.counters = counters if counters is not None else ReportCounters()
        #: The last TLS session per node address (resumed next round).
        self._sessions: dict[str, Any] = {}
        #: Connections whose TLS session was resumed (bench figures).
        self.resumed = 0
        self._handshakes = defer.DeferredSemaphore(handshakes)
        #: Answers received while nodes wait for a handshake slot: checked
        #: once none waits (see _fetch_kept).
        self._parse_later: list[defer.Deferred[None]] = []
        #: One idle connection kept per node between rounds.
        self.pool = keepalive.ConnectionPool(reactor, max_idle=max(parallel, 1),
                                             max_body=MAX_BODY, idle_timeout=idle_timeout)
        self._ctx = getattr(tls, "ctx", None)
        #: Seconds spent verifying signatures (bench figures).
        self.verify_seconds = 0.0
        self.verified = 0

    @classmethod
    def create(
        cls, reactor: Any, *, key: bytes | None, cert: str | None, **kwargs: Any
    ) -> AgentClient:
        """With TLS pinned to certificate file ``cert`` (None: plain HTTP).

        Raises ``RapiConfigError`` naming the file when it is unusable.
        """
        tls = None
        if cert is not None:
            tls = _PinnedAgents.from_file(cert)
        return cls(reactor, key=key, tls=tls, **kwargs)

    async def close(self) -> None:
        """Close the connections kept for the next round."""
        await self.pool.close()

    async def _get_json(self, node: Node, path: str) -> Any:
        """``path``'s document from ``node``'s agent over the kept connection,
        else a new one, within the node's timeout (see :class:`_Deadline`)."""
        url = self.url(node, path)
        deadline = _Deadline(self._reactor, self.timeout, self.timeout / 2)
        d = defer.Deferred.fromCoroutine(self._fetch_kept(node, url, path, deadline))
        deadline.start(d.cancel)
        try:
            return await d
        except Exception:
            if deadline.expired:
                raise self.Error(node.name, f"no answer from {url} within {self.timeout:g}s") from None
            raise
        finally:
            deadline.cancel()

    async def _fetch_kept(self, node: Node, url: str, path: str, deadline: _Deadline) -> Any:
        conn = self.pool.take(node.pip, self.port)
        if conn is not None:
            try:
                code, body = await self._answer(node, url, conn.request(path.encode("ascii")))
            except keepalive.StaleConnection:
                # closed by the agent (restart, idle) before it answered: a
                # GET is safe to repeat, once, on a new connection
                self.pool.retried += 1
            else:
                self.pool.put(node.pip, self.port, conn)
                return self._parse(node, url, code, body)
        deadline.hold()
        release = await self._handshake_slot()
        deadline.progress()  # the connection attempt begins

        def handshake_done() -> None:
            release()
            deadline.progress()  # the request goes out

        # a node that does not complete its handshake (powered off,
        # black-holed) holds the slot for a short while only, then keeps
        # waiting for its own timeout without it
        hold = self._reactor.callLater(self.stall, release) if self._tls is not None else None
        try:
            conn = self.pool.connect(node.pip, self.port, path, self._creator(node),
                                     on_handshake=handshake_done, check_peer=self._check_peer)
            assert conn.pending is not None
            code, body = await self._answer(node, url, conn.pending)
        finally:
            if hold is not None and hold.active():
                hold.cancel()
            release()
        self._keep_session(node, conn)
        self.pool.put(node.pip, self.port, conn)
        if self._handshakes.waiting:
            # The node answered in time.  Checking its answer can wait until
            # every node is past its handshake: the sooner all are asked,
            # the sooner the silent ones time out (a round's first asks
            # every node over a new connection).
            deadline.cancel()
            waiter: defer.Deferred[None] = defer.Deferred()
            self._parse_later.append(waiter)
            await waiter
        return self._parse(node, url, code, body)

    async def _handshake_slot(self) -> Callable[[], None]:
        """Wait for a TLS handshake slot; its release function."""
        if self._tls is None:
            return lambda: None
        await self._handshakes.acquire()
        self._parse_waiting()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._handshakes.release()
                self._parse_waiting()

        return release

    def _parse_waiting(self) -> None:
        """Let the answers kept for later be checked once no node waits for
        a handshake slot."""
        if self._handshakes.waiting or not self._parse_later:
            return
        waiters, self._parse_later = self._parse_later, []
        for waiter in waiters:
            if not waiter.called:  # not cancelled meanwhile (a stopping round)
                waiter.callback(None)

    async def _answer(self, node: Node, url: str,
                      pending: defer.Deferred[tuple[int, bytes]]) -> tuple[int, bytes]:
        try:
            return await pending
        except keepalive.TooLarge:
            raise self.Error(node.name, f"answer from {url} is larger than {MAX_BODY} bytes") from None
        except (defer.CancelledError, keepalive.StaleConnection):
            raise
        except keepalive.BadResponse as e:
            raise self._invalid(node.name, f"bad HTTP answer from {url}: {e}") from None
        except keepalive.PeerRefused as e:
            raise self.Error(node.name, f"cannot reach {url}: {e}") from None
        except Exception as e:  # refused, reset, closed early, TLS refused
            text = getattr(e, "value", e)
            raise self.Error(node.name, f"cannot reach {url}: {text}") from None

    def _check_peer(self, transport: Any) -> str | None:
        """Why the agent behind ``transport`` is refused (None: it is not)."""
        check = getattr(self._tls, "check", None)
        return check(transport) if check is not None else None

    def _creator(self, node: Node) -> Any:
        """The TLS connection creator for ``node`` (None: plain HTTP),
        offering the node's last TLS session."""
        if self._tls is None or self._ctx is None:
            return self._tls
        return _Resuming(self._ctx, self._sessions.get(node.pip))

    def _keep_session(self, node: Node, conn: keepalive.Connection) -> None:
        """Remember the TLS session of a new connection (resumed when the
        next connection to the node is needed)."""
        if self._ctx is None or conn.transport is None:
            return
        try:
            handle = conn.transport.getHandle()  # type: ignore[attr-defined]
            session = handle.get_session()
            self.resumed += bool(_lib.SSL_session_reused(handle._ssl))
        except Exception:
            session = None
        if session is not None:
            self._sessions[node.pip] = session

    def _parse(self, node: Node, url: str, code: int, body: bytes) -> Any:
        if code != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise AgentError(node.name, f"{url} answered HTTP {code}: {text}")
        started = time.perf_counter()
        try:
            payload, _signed = signing.loads(body, self.key, self.wallclock(), source=url,
                                             window=self.window,
                                             allow_unsigned=self.allow_unsigned)
        except strictjson.StrictJSONError as e:
            raise AgentError(node.name, f"malformed JSON from {url}: {e.problem}",
                             "invalid") from None
        except signing.SignatureError as e:
            outcome = "invalid" if e.kind == "malformed" else "bad_signature"
            raise AgentError(node.name, f"report refused: {e.detail}", outcome) from None
        finally:
            self.verify_seconds += time.perf_counter() - started
            self.verified += 1
        return payload

    async def diagnose(self, node: Node) -> DiagnoseReport:
        """The node's verified, validated self-diagnose report (counted)."""
        try:
            document = await self._get_json(node, self.diagnose_path)
            data = document.get("data") if isinstance(document, dict) else None
            if isinstance(data, dict) and data.get("collector_failed") is True:
                reason = str(data.get("reason", ""))[:500]
                raise AgentError(node.name, f"diagnose collector failed: {reason}",
                                 "collector_failed")
            try:
                report = validate_diagnose(node.name, document)
            except MondError as e:
                text = str(e).split(": ", 1)[-1]
                raise AgentError(node.name, text, "invalid") from None
        except AgentError as e:
            self.counters.add(node.name, e.outcome)
            raise
        except MondError as e:  # not expected: the base class's own errors
            self.counters.add(node.name, "unreachable")
            raise AgentError(node.name, str(e)) from None
        self.counters.add(node.name, "ok")
        return report
