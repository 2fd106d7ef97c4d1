"""The agent's HTTP resource (mond's paths and envelope, signed).

- ``GET /`` -> ``[1]``; ``GET /1/list/collectors`` -> ``[["diagnose", "node", 1]]``
- ``GET /1/report/node/diagnose`` -> the signed envelope ``{"msg", "salt",
  "hmac"}`` whose message is the mond report (name, version,
  format_version, timestamp, category, kind, data);
  ``GET /1/report/all`` -> the same envelope around a list of that report
- ``POST /1/repair`` -> :class:`maintd.agent.repair.RepairService`, answered
  with a signed envelope too.
- ``PUT /1/replica``, ``GET /1/replica`` -> the daemon's signed state copy
  (:class:`maintd.agent.replica.ReplicaStore`).

The resource is shared by the real agent and the simulator's agents: it
gets functions for the current diagnose data and for repairs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.iweb import IRequest

from maintd.agent import diagnose
from maintd.agent.repair import MAX_REQUEST, RepairService
from maintd.agent.replica import MAX_REPLICA, ReplicaStore
from maintd.common import signing
from maintd.daemon.httpguard import ConnectionGuard

log = Logger()

NOT_FOUND = b"Unable to produce a report for the requested resource"
#: Seconds an idle client connection stays open: the daemon keeps one
#: connection per node between rounds (``maintd.cluster.keepalive``, 900 s),
#: so the agent closes later than the daemon does.
IDLE_TIMEOUT = 960.0
#: Connections open at most (the daemon needs one, plus short-lived ones for
#: repairs and state copies): idle ones are kept long, so they are capped.
MAX_CONNECTIONS = 64


class AgentResource(resource.Resource):
    isLeaf = True

    def __init__(
        self,
        *,
        key: bytes,
        data: Callable[[], tuple[dict[str, Any], float]],
        repairs: RepairService | None,
        wallclock: Callable[[], float],
        replica: ReplicaStore | None = None,
    ) -> None:
        super().__init__()
        self.key = key
        self.data = data
        self.repairs = repairs
        self.wallclock = wallclock
        self.replica = replica
        self.served = 0

    def _json(self, request: IRequest, code: int, body: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return body

    def _signed(self, request: IRequest, code: int, payload: Any) -> bytes:
        return self._json(request, code, signing.dumps(payload, self.key, self.wallclock()))

    def render_GET(self, request: IRequest) -> bytes:  # noqa: N802
        parts = [p for p in request.path.decode("utf-8", "replace").split("/") if p]
        if parts == []:
            return self._json(request, 200, b"[1]")
        if parts == ["1", "list", "collectors"]:
            return self._json(request, 200, json.dumps(diagnose.COLLECTORS).encode())
        if parts in (["1", "report", "node", "diagnose"], ["1", "report", "all"]):
            data, when = self.data()
            rep = diagnose.report(data, when)
            self.served += 1
            return self._signed(request, 200, rep if parts[2] == "node" else [rep])
        if parts == ["1", "replica"] and self.replica is not None:
            if self.replica.envelope is None:
                return self._json(request, 404, b'{"error": "no replica"}')
            return self._json(request, 200, self.replica.envelope)
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain")
        return NOT_FOUND

    @staticmethod
    def _no_resource(request: IRequest, path: list[str], handler: object) -> bytes | None:
        """404 unless ``request`` is for ``path`` and there is a ``handler``."""
        parts = [p for p in request.path.decode("utf-8", "replace").split("/") if p]
        if parts == path and handler is not None:
            return None
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain")
        return b"no such resource"

    def render_PUT(self, request: IRequest) -> bytes:  # noqa: N802
        missing = self._no_resource(request, ["1", "replica"], self.replica)
        if missing is not None or self.replica is None:
            return missing or b""
        content = request.content  # type: ignore[attr-defined]
        body = content.read(MAX_REPLICA + 1)
        peer = request.getClientAddress()
        code, answer = self.replica.put(body, f"replica from {getattr(peer, 'host', peer)}")
        return self._json(request, code, json.dumps(answer).encode())

    def render_POST(self, request: IRequest) -> Any:  # noqa: N802
        missing = self._no_resource(request, ["1", "repair"], self.repairs)
        if missing is not None or self.repairs is None:
            return missing
        content = request.content  # type: ignore[attr-defined]
        content.seek(0, 2)
        size = content.tell()
        if size > MAX_REQUEST:
            log.warn("repair request of {size} bytes refused (limit {limit}); nothing run",
                     size=size, limit=MAX_REQUEST)
            return self._signed(request, 413,
                                {"error": f"request larger than {MAX_REQUEST} bytes"})
        content.seek(0)
        body = content.read()
        d = defer.Deferred.fromCoroutine(self.repairs.handle(body))

        def answer(result: tuple[int, dict[str, Any]]) -> None:
            code, payload = result
            if not getattr(request, "_disconnected", False):
                request.write(self._signed(request, code, payload))
                request.finish()

        def oops(failure: Any) -> None:
            log.error("repair request failed: {error}", error=failure.getErrorMessage())
            if not getattr(request, "_disconnected", False):
                request.write(self._json(request, 500, json.dumps(
                    {"error": f"internal error: {failure.getErrorMessage()}"}).encode()))
                request.finish()

        d.addCallbacks(answer, oops)
        return server.NOT_DONE_YET


def tls_options(pem: bytes) -> Any:
    """Server TLS options from a PEM key and certificate (Ganeti's
    ``server.pem``), with session tickets so the daemon resumes sessions."""
    from twisted.internet import ssl

    cert = ssl.PrivateCertificate.loadPEM(pem.decode("ascii"))
    return ssl.CertificateOptions(privateKey=cert.privateKey.original,
                                  certificate=cert.original, enableSessionTickets=True)


class _Channel(http.HTTPChannel):
    """An HTTP connection of the agent, known to its site's connection cap."""

    site: QuietSite

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self.site.guard.opened(self)

    def requestDone(self, request: Any) -> None:  # noqa: N802
        super().requestDone(request)
        self.site.guard.active(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.site.guard.closed(self)
        super().connectionLost(reason)

    def peer(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(address, "host", address))

    def evict(self) -> None:
        """Closed to make room for a new connection (the cap)."""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class QuietSite(server.Site):
    """A site without access log lines or factory start/stop noise; idle
    connections kept :data:`IDLE_TIMEOUT` seconds (the daemon's, between
    rounds), at most :data:`MAX_CONNECTIONS` open: a new one beyond closes
    the least recently active (``maintd.daemon.httpguard``; the daemon's kept
    connection, if it is the one, is simply opened again next round)."""

    noisy = False

    def __init__(self, res: Any, label: str = "ganeti-maintd-agent",
                 max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(res, timeout=IDLE_TIMEOUT)
        self.label = label
        self.protocol = _Channel  # type: ignore[assignment]
        self.guard = ConnectionGuard(max_connections, self.reactor, what=label, option="")

    def logPrefix(self) -> str:  # noqa: N802
        return self.label

    def log(self, request: Any) -> None:
        pass
