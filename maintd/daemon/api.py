"""The read-only HTTP state API (Klein), as in ganeti-maintd(8).

======================  ==============================================
``GET /``               ``[1]``: the supported protocol versions
``GET /1``              ``null``
``GET /1/status``       the incidents (``Incident.to_json`` objects)
``GET /1/jobs``         ids of the Ganeti jobs the daemon waits for
``GET /1/evacuated``    names of recently evacuated instances
``GET /1/last-round``   summary of the last round (and the dry-run plan)
``GET /1/overview``     budget, storm breaker, pause, incident counts,
                        next round, version (:func:`maintd.decide.guardrails.overview`)
``GET /metrics``        Prometheus metrics (``maintd.daemon.metrics``)
``GET /ui``             the status page, HTML (``maintd.daemon.ui``)
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
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

from maintd import __version__
from maintd.daemon.state import MaintState
from maintd.daemon.store import IncidentCodec
from maintd.decide import guardrails

if TYPE_CHECKING:
    from maintd.daemon.metrics import DaemonMetrics
    from maintd.daemon.ui import StatusPage

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
    return data


def _send_built(request: IRequest, body: bytes, content_type: bytes) -> bytes:
    """A body built for this request (metrics, the page): gzip when asked and large."""
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    if len(body) >= GZIP_MIN:
        request.setHeader(b"Vary", b"Accept-Encoding")
        if _accepts_gzip(request):
            request.setHeader(b"Content-Encoding", b"gzip")
            body = _gzip(body) or body
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body


class StateAPI:
    """Serves the latest :class:`MaintState` given to :meth:`update`."""

    app = Klein()

    def __init__(
        self,
        state: MaintState | None = None,
        overview: OverviewFn | None = None,
        *,
        metrics: DaemonMetrics | None = None,
        page: StatusPage | None = None,
    ) -> None:
        #: The overview is built at request time (a pause may end, the next
        #: round moves): ``overview(state)``, by default without round facts.
        self.overview_fn: OverviewFn = overview or default_overview
        self._state = state if state is not None else MaintState()
        #: ``/metrics`` and ``/ui`` answer 404 without them.
        self.metrics = metrics
        self.page = page
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

    def site(self, *, debug: bool = False) -> Site:
        """The HTTP site for the daemon (see :class:`_Channel`)."""
        return _Site(self, debug)

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

    @app.route("/metrics", methods=_METHODS, strict_slashes=False)
    def metrics_text(self, request: IRequest) -> bytes:
        if self.metrics is None:
            raise NotFound()
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics.exposition(accept.decode("latin-1") if accept else None)
        return _send_built(request, body, content_type.encode("ascii"))

    @app.route("/ui", methods=_METHODS, strict_slashes=False)
    def status_page(self, request: IRequest) -> Any:
        if self.page is None:
            raise NotFound()
        from maintd.daemon.ui import CSP

        def send(html: bytes) -> bytes:
            request.setHeader(b"Content-Security-Policy", CSP)
            return _send_built(request, html, b"text/html; charset=utf-8")

        def failed(failure: Failure) -> bytes:
            # one line, not a traceback; the rounds and the JSON API go on
            log.error("status page failed: {error}", error=failure.getErrorMessage())
            return _send(request, _Body(None, _encode({"error": "status page failed"})), 500)

        return self.page.render().addCallbacks(send, failed)

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
        return self.app.render(request)


class _Site(Site):
    """The API's site.  Request lines are debug events (only with ``-d``),
    not an access log.  Without ``-d`` connections use :class:`_Channel`,
    with ``-d`` :class:`_LimitedChannel` (every request logged)."""

    def __init__(self, api: StateAPI, debug: bool) -> None:
        super().__init__(api.resource())
        self.api = api
        self.debug = debug
        self.noisy = False
        self.displayTracebacks = False
        self.protocol = _Channel if not debug else _LimitedChannel  # type: ignore[assignment]

    def log(self, request: Any) -> None:
        if not self.debug:
            return
        log.debug(
            "{method} {uri} {code} from {client}",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            code=request.code,
            client=request.getClientAddress(),
        )


class _LimitedChannel(HTTPChannel):
    """HTTP/1.1 whose over-long lines get an answer.

    A request line or header line longer than ``MAX_LENGTH`` (16 KiB) makes
    twisted.web drop the connection without a word; here the client gets
    414 (request line) or 431 (a header) with a JSON body, then the
    connection is closed.  (Too many headers or too many header bytes in
    all already get twisted.web's 400.)
    """

    def lineLengthExceeded(self, line: bytes) -> None:
        first = getattr(self, "_HTTPChannel__first_line", 0)
        if first:
            code, reason, error = 414, b"URI Too Long", "request line too long"
        else:
            code, reason, error = 431, b"Request Header Fields Too Large", "header line too long"
        body = _encode({"error": error, "limit": self.MAX_LENGTH})
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (code, reason, len(body), body)
            )
            self.transport.loseConnection()


class _Channel(_LimitedChannel):
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
        if not self._shortcut(data):
            super().dataReceived(data)

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
