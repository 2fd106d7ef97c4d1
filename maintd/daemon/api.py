"""The read-only HTTP state API (Klein), as in ganeti-maintd(8).

======================  ==============================================
``GET /``               ``[1]``: the supported protocol versions
``GET /1``              ``null``
``GET /1/status``       the incidents (``Incident.to_json`` objects)
``GET /1/status/UUID``  one incident with ``job-details`` (status and
                        summary of each job, from RAPI on demand; see
                        maintd.daemon.details); 404 for an unknown uuid
``GET /1/jobs``         ids of the Ganeti jobs the daemon waits for
``GET /1/evacuated``    names of recently evacuated instances
``GET /1/last-round``   summary of the last round (and the dry-run plan)
``GET /1/overview``     budget, storm breaker, pause, incident counts,
                        next round, version (:func:`maintd.decide.guardrails.overview`)
======================  ==============================================

Every path works with and without a trailing slash; ``HEAD`` works like
``GET``.  Unknown paths answer 404 and other methods 405, both with a JSON
``{"error": ...}`` body.

Speed: the bodies are encoded when the state changes (the store calls
:meth:`StateAPI.update`; each part is re-encoded only when it changed, each
incident only once), together with a gzip copy of the larger ones for
clients that send ``Accept-Encoding: gzip``.  :meth:`StateAPI.resource`
answers the documented GET/HEAD paths straight from that table and hands
everything else to the Klein app, which also defines the same routes.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

from maintd import __version__
from maintd.daemon.details import incident_details
from maintd.daemon.httpguard import ConnectionGuard, HttpLimits
from maintd.daemon.state import MaintState
from maintd.daemon.store import IncidentCodec
from maintd.decide import guardrails

log = Logger()

JSON = b"application/json"
API_VERSIONS = [1]
_METHODS = ["GET", "HEAD"]
#: Bodies at least this long also get a pre-compressed gzip copy.
GZIP_MIN = 1024
PARTS = ("status", "jobs", "evacuated", "last-round")
OVERVIEW = "overview"

#: Builds the overview object from the current state (see :class:`StateAPI`).
OverviewFn = Callable[[MaintState], dict[str, Any]]


def default_overview(state: MaintState) -> dict[str, Any]:
    return guardrails.overview(state, now=time.time(), version=__version__)


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _gzip(body: bytes) -> bytes | None:
    if len(body) < GZIP_MIN:
        return None
    c = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip container
    return c.compress(body) + c.flush()


class _Body:
    """One resource's body, its gzip copy, and the matching 200 response heads."""

    __slots__ = ("source", "plain", "gzipped", "head_plain", "head_gzip")

    def __init__(self, source: object, plain: bytes) -> None:
        self.source = source
        self.plain = plain
        self.gzipped = _gzip(plain)
        vary = b"Vary: Accept-Encoding\r\n" if self.gzipped is not None else b""
        self.head_plain = _head(len(plain), vary)
        self.head_gzip = (
            _head(len(self.gzipped), vary + b"Content-Encoding: gzip\r\n")
            if self.gzipped is not None
            else self.head_plain
        )


def _head(length: int, extra: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%sDate: " % (length, extra)
    )


def _wants_gzip(value: bytes | str | None) -> bool:
    """Whether an Accept-Encoding header value accepts gzip."""
    if not value:
        return False
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    for item in text.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _accepts_gzip(request: IRequest) -> bool:
    return _wants_gzip(request.getHeader(b"accept-encoding"))


def _send(request: IRequest, body: _Body, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", JSON)
    data = body.plain
    if body.gzipped is not None:
        request.setHeader(b"Vary", b"Accept-Encoding")
        if _accepts_gzip(request):
            request.setHeader(b"Content-Encoding", b"gzip")
            data = body.gzipped
    # A known length: no chunked encoding, and keep-alive stays cheap.
    request.setHeader(b"Content-Length", b"%d" % len(data))
    if request.method == b"HEAD":
        # The length of the GET body, no body: twisted.web logs (at info,
        # with the whole URI) every HEAD whose resource returns a body.
        return b""
    return data


def _path_is_utf8(path: bytes) -> bool:
    """Whether the percent-decoded ``path`` is UTF-8 (Klein needs it to be)."""
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _bad_request(request: IRequest, reason: str) -> bytes:
    return _send(request, _Body(None, _encode({"error": "bad request", "reason": reason})), 400)


class StateAPI:
    """Serves the latest :class:`MaintState` given to :meth:`update`."""

    app = Klein()
    # werkzeug answers "/1//status" with a 308 redirect to "/1/status" (an
    # HTML body); every answer here is JSON and unknown paths are 404.
    app.url_map.merge_slashes = False

    def __init__(
        self,
        state: MaintState | None = None,
        overview: OverviewFn | None = None,
        *,
        jobs: Any = None,
    ) -> None:
        #: The overview is built at request time (a pause may end, the next
        #: round moves): ``overview(state)``, by default without round facts.
        self.overview_fn: OverviewFn = overview or default_overview
        #: A maintd.cluster.jobinfo.JobInfo for /1/status/UUID (None: job
        #: status "unknown").
        self.jobs = jobs
        self._state = state if state is not None else MaintState()
        self._codec = IncidentCodec()
        self._fixed = {"root": _Body(None, _encode(API_VERSIONS)), "1": _Body(None, _encode(None))}
        self._parts: dict[str, _Body] = {}
        self.update(state if state is not None else MaintState())

    def update(self, state: MaintState) -> None:
        """Show ``state`` from now on (re-encode only what changed)."""
        self._state = state
        self._set("status", state.incidents, lambda: self._codec.encode(state.incidents))
        self._set("jobs", state.jobs, lambda: _encode(list(state.jobs)))
        self._set("evacuated", state.evacuated, lambda: _encode(list(state.evacuated)))
        self._set("last-round", state.last_round, lambda: _encode(dict(state.last_round)))

    def _set(self, name: str, source: object, build: Callable[[], bytes]) -> None:
        old = self._parts.get(name)
        # Identity first (cheap, the usual case: evolve() keeps untouched
        # parts), then equality.
        if old is not None and (old.source is source or old.source == source):
            return
        self._parts[name] = _Body(source, build())

    def body(self, name: str) -> bytes:
        """The current JSON body of ``/1/<name>``."""
        if name == OVERVIEW:
            return self._overview_body().plain
        return self._parts[name].plain

    def overview(self) -> dict[str, Any]:
        """The ``/1/overview`` object now."""
        return self.overview_fn(self._state)

    def _overview_body(self) -> _Body:
        return _Body(None, _encode(self.overview()))

    def lookup(self, path: bytes) -> _Body | None:
        """The body served at ``path`` (trailing slash or not), or None."""
        if path == b"/":
            return self._fixed["root"]
        if path.endswith(b"/"):
            path = path[:-1]
        if path == b"/1":
            return self._fixed["1"]
        if path == b"/1/" + OVERVIEW.encode():
            return self._overview_body()
        if path.startswith(b"/1/"):
            return self._parts.get(path[3:].decode("ascii", "replace"))
        return None

    def resource(self) -> IResource:
        """The site's root resource."""
        return _FastPath(self, self.app.resource())

    def site(
        self, *, debug: bool = False, limits: HttpLimits | None = None, reactor: Any = None
    ) -> Site:
        """The HTTP site for the daemon (see :class:`_Channel`); ``reactor``
        (default: the global one) runs the connection timeouts."""
        return _Site(self, debug, limits or HttpLimits(), reactor)

    # --- the Klein app ------------------------------------------------------

    @app.route("/", methods=_METHODS)
    def root(self, request: IRequest) -> bytes:
        return _send(request, self._fixed["root"])

    @app.route("/1", methods=_METHODS, strict_slashes=False)
    def version(self, request: IRequest) -> bytes:
        return _send(request, self._fixed["1"])

    @app.route(
        '/1/<any("status","jobs","evacuated","last-round"):part>',
        methods=_METHODS,
        strict_slashes=False,
    )
    def part(self, request: IRequest, part: str) -> bytes:
        return _send(request, self._parts[part])

    @app.route("/1/overview", methods=_METHODS, strict_slashes=False)
    def overview_route(self, request: IRequest) -> bytes:
        return _send(request, self._overview_body())

    @app.route("/1/status/<string:uuid>", methods=_METHODS, strict_slashes=False)
    def one_incident(self, request: IRequest, uuid: str) -> Any:
        inc = self._state.incident(uuid)
        if inc is None:
            body = {"error": "no such incident", "uuid": uuid}
            return _send(request, _Body(None, _encode(body)), 404)

        async def answer() -> bytes:
            details = await incident_details(inc, self.jobs)
            return _send(request, _Body(None, _encode(details)))

        return Deferred.fromCoroutine(answer())

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace") if request.path else ""
        return _send(request, _Body(None, _encode({"error": "not found", "path": path})), 404)

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        method = request.method.decode("ascii", "replace") if request.method else ""
        request.setHeader(b"Allow", b"GET, HEAD")
        body = {"error": "method not allowed", "method": method, "allowed": _METHODS}
        return _send(request, _Body(None, _encode(body)), 405)


class _FastPath(Resource):
    """GET/HEAD of a documented path: the pre-encoded body, no routing;
    anything else: the Klein app."""

    isLeaf = True

    def __init__(self, api: StateAPI, app: IResource) -> None:
        super().__init__()
        self.api = api
        self.app = app

    def render(self, request: IRequest) -> Any:
        if request.method in (b"GET", b"HEAD") and request.path is not None:
            body = self.api.lookup(request.path)
            if body is not None:
                return _send(request, body)
        if request.path is None or not _path_is_utf8(request.path):
            # Klein would answer 400 too, but log a critical traceback first.
            return _bad_request(request, "the path is not UTF-8")
        return self.app.render(request)


class _Site(Site):
    """The API's site.  Request lines are debug events (only with ``-d``),
    not an access log.  Connections use :class:`_Channel` under the limits of
    :mod:`maintd.daemon.httpguard` (the shortcut only without ``-d``)."""

    def __init__(
        self, api: StateAPI, debug: bool, limits: HttpLimits, reactor: Any = None
    ) -> None:
        super().__init__(api.resource(), timeout=limits.idle_timeout, reactor=reactor)
        self.api = api
        self.debug = debug
        self.limits = limits
        self.guard = ConnectionGuard(limits.max_connections, self.reactor)
        self.noisy = False
        self.displayTracebacks = False
        self.protocol = _Channel  # type: ignore[assignment]

    def log(self, request: Any) -> None:
        if not self.debug:
            return
        log.debug(
            "{method} {uri} {code} from {client}",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace")[:200],
            code=request.code,
            client=request.getClientAddress(),
        )


class _Channel(HTTPChannel):
    """HTTP/1.1 with a shortcut for the common case.

    When the connection is idle and one whole ``GET`` of a documented path
    arrives (HTTP/1.1, no body, no ``Connection: close``), the answer is the
    pre-built response head + body, written at once: no Request object, no
    header objects, no routing.  Anything else (other methods and paths,
    HTTP/1.0, pipelined or split requests, bodies) goes to twisted.web as
    usual, so the behaviour is the same, only the cost differs.
    """

    site: _Site
    _date: tuple[int, bytes] = (0, b"")
    #: The pending request timeout (see maintd.daemon.httpguard).
    _request_call: Any = None
    #: loseConnection was called.
    _closing = False

    # --- connection limits --------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.guard.opened(self)
        self._arm()

    def connectionLost(self, reason: Any = None) -> None:
        self._disarm()
        self.site.guard.closed(self)
        super().connectionLost(reason)

    def _arm(self) -> None:
        timeout = self.site.limits.header_timeout
        if self._request_call is None and timeout:
            self._request_call = self.callLater(timeout, self._request_timed_out)

    def _disarm(self) -> None:
        call, self._request_call = self._request_call, None
        if call is not None and call.active():
            call.cancel()

    def _request_timed_out(self) -> None:
        self._request_call = None
        self.site.guard.timed_out += 1
        log.debug(
            "HTTP API: no complete request from {peer} within {timeout}s; closing",
            peer=self.peer(),
            timeout=self.site.limits.header_timeout,
        )
        self.site.guard.closed(self)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def peer(self) -> str:
        try:
            address = self.transport.getPeer()  # type: ignore[union-attr]
        except Exception:
            return "?"
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    def evict(self) -> None:
        """Closed to make room for a new connection (the cap)."""
        self._disarm()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self.site.guard.active(self)
        super().requestDone(request)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's answer to a request it cannot parse (bad request
        # line, header, length...) has no body; ours is JSON like the rest.
        body = _encode({"error": "bad request", "reason": "malformed HTTP request"})
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(body), b"" if getattr(self, "_command", None) == b"HEAD" else body)
            )
        self._disarm()
        self.loseConnection()

    def loseConnection(self) -> None:
        # Once only: HTTPChannel's unregisters its producer, and a second
        # call (the idle timeout of a connection already closing but not
        # yet closed, e.g. after a bad request) raised RuntimeError in a
        # DelayedCall: an unhandled error in the log.
        if self._closing:
            return
        self._closing = True
        super().loseConnection()

    def timeoutConnection(self) -> None:
        # The idle timeout; as twisted.web's, which logs each one at info.
        if self._closing:  # closing for a whole idle period already: abort
            self.forceAbortClient()
            return
        log.debug("HTTP API: closing idle connection from {peer}", peer=self.peer())
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def forceAbortClient(self) -> None:
        log.debug("HTTP API: aborting idle connection from {peer}", peer=self.peer())
        self._abortingCall = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # --- the shortcut -------------------------------------------------------

    def _idle(self) -> bool:
        # HTTPChannel's private state; should Twisted rename any of it, the
        # shortcut switches itself off (AttributeError) and nothing else.
        try:
            return self._idle_state()
        except AttributeError:
            return False

    def _idle_state(self) -> bool:
        return (
            not self.requests
            and not self._handlingRequest
            and not self._dataBuffer
            and not self._buffer
            and bool(self.line_mode)
            and not getattr(self, "_busyReceiving", True)
            and getattr(self, "_HTTPChannel__first_line", 0) == 1
            and self._receivedHeaderCount == 0
            and bool(self.persistent)
        )

    def dataReceived(self, data: bytes) -> None:
        if not self.site.debug and self._shortcut(data):
            self._disarm()
            self.site.guard.active(self)
            return
        super().dataReceived(data)
        if self._request_call is None and self._receiving():
            self._arm()  # the first bytes of a request: its deadline starts

    def _receiving(self) -> bool:
        """Whether part of a request was read and the rest is awaited."""
        if self.line_mode:  # request line and headers
            return bool(getattr(self, "_buffer", b"")) or bool(
                getattr(self, "_receivedHeaderCount", 0)
            )
        return not getattr(self, "_handlingRequest", True)  # a body

    def _shortcut(self, data: bytes) -> bool:
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 != len(data) or not data.startswith(b"GET /"):
            return False
        if not self._idle():
            return False
        lines = data[:end].split(b"\r\n")
        request_line = lines[0].split(b" ")
        if len(request_line) != 3 or request_line[2] != b"HTTP/1.1":
            return False
        body = self.site.api.lookup(request_line[1])
        if body is None:
            return False
        gzip = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                return False
            name = name.strip().lower()
            if name in (b"content-length", b"transfer-encoding", b"expect", b"upgrade"):
                return False
            if name == b"connection" and b"close" in value.lower():
                return False
            if name == b"accept-encoding":
                gzip = _wants_gzip(value)
        transport = self.transport
        if transport is None:
            return False
        self.resetTimeout()
        if gzip and body.gzipped is not None:
            head, payload = body.head_gzip, body.gzipped
        else:
            head, payload = body.head_plain, body.plain
        transport.writeSequence([head, self._http_date(), b"\r\n\r\n", payload])
        return True

    def _http_date(self) -> bytes:
        now = int(time.time())
        if _Channel._date[0] != now:
            _Channel._date = (now, datetimeToString(now))
        return _Channel._date[1]
