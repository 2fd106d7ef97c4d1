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

Requests, timeouts and bounded concurrency are :class:`MondClient`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from maintd.cluster.model import Node
from maintd.cluster.mond import DiagnoseReport, MondClient, MondError, validate_diagnose
from maintd.common import signing, strictjson

log = Logger()

DEFAULT_PORT = 1817
#: TLS handshakes in progress at most.  Handshakes cost CPU on both sides;
#: a thousand started at once all finish late together (each node's timeout
#: runs out before any answer on a busy host).  Queued requests wait before
#: their timeout starts; a node that completed its handshake and is slow to
#: answer holds no handshake slot, one that cannot complete it holds its
#: slot for half its timeout at most.
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
        conn = SSL.Connection(self.ctx, None)
        conn.set_app_data(tlsProtocol)
        conn.set_connect_state()
        if self.session is not None:
            conn.set_session(self.session)
        return conn


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
        self._handshakes = defer.DeferredSemaphore(HANDSHAKES)
        self._release: dict[str, Callable[[], None]] = {}
        self._ctx = getattr(tls, "_ctx", None)
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
            from maintd.cluster.rapi.tls import PinnedCertificatePolicy

            policy = PinnedCertificatePolicy.from_file(cert)
            policy.what = "node agent"
            tls = policy.creatorForNetloc(b"", kwargs.get("port", DEFAULT_PORT))
        return cls(reactor, key=key, tls=tls, **kwargs)

    async def _get_json(self, node: Node, path: str) -> Any:
        if self._tls is None:
            return await super()._get_json(node, path)
        await self._handshakes.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._handshakes.release()

        self._release[node.pip] = release
        # a node that does not even complete its handshake (powered off,
        # black-holed) holds the slot for half its timeout at most
        call = self._reactor.callLater(self.timeout / 2, release)
        try:
            return await super()._get_json(node, path)
        finally:
            if call.active():
                call.cancel()
            release()
            self._release.pop(node.pip, None)

    def _tls_for(self, node: Node) -> tuple[Any, Any, Any]:
        on_handshake = self._release.get(node.pip)
        if self._tls is None or self._ctx is None:
            return self._tls, None, on_handshake
        pip = node.pip

        def keep(transport: Any) -> None:
            try:
                conn = transport.getHandle()
                session = conn.get_session()
                self.resumed += bool(_lib.SSL_session_reused(conn._ssl))
            except Exception:
                session = None
            if session is not None:
                self._sessions[pip] = session

        return _Resuming(self._ctx, self._sessions.get(pip)), keep, on_handshake

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
