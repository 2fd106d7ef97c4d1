"""Client for Ganeti's monitoring daemon (mond) on every node.

mond answers plain HTTP on each node's primary IP (port 1815).  The
maintenance round asks every node for its self-diagnose report
(``/1/report/node/diagnose``, the ``diagnose`` collector of 2.17); the
balancer asks for load reports.  Node-supplied data drives actions, so the
self-diagnose report is validated here before anyone sees it: the status
must be one of the four verdicts, the command a plain command name and the
whole report bounded in size.

Requests run concurrently with a bound on how many are in flight and a
per-node timeout that covers connecting, waiting and reading the body, so a
node that accepts connections and never answers costs one timeout for the
whole round, not one per dead node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import treq
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.web.http import HTTPClient as HTTPClient11
from zope.interface import implementer

from maintd.cluster.model import Node
from maintd.common import strictjson
from maintd.daemon.state import Action

log = Logger()

T = TypeVar("T")

DEFAULT_PORT = 1815
#: Nodes asked at once by default: a round asks every node of clusters up to
#: this size at the same time, so silent nodes' timeouts overlap instead of
#: starting late (bench/round.py: 1,000 nodes, 5 % silent).
DEFAULT_PARALLEL = 1024
DEFAULT_DIAGNOSE_PATH = "/1/report/node/diagnose"
#: Largest response body read from a mond (bytes).
MAX_BODY = 1024 * 1024
#: Largest self-diagnose ``data`` object, JSON-encoded (bytes).
MAX_REPORT = 16 * 1024
#: Deepest nesting of a mond answer (lists/objects): real reports nest less
#: than 6 levels; the report ends up in the state file and ``/1/status``.
MAX_DEPTH = 32
#: A repair command is a bare command name: no path, no leading dot or dash.
COMMAND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
#: Requests outstanding at most, in units of ``parallel`` (stalled ones included).
#: maintd.daemon.fdlimit sizes the open-file limit from it.
STALLED_FACTOR = 4
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class MondError(Exception):
    """Any failure talking to one node's mond; the message names the node."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"mond on {node}: {message}")
        self.node = node


@attrs.frozen
class DiagnoseReport:
    """A validated self-diagnose report of one node."""

    node: str
    status: Action
    command: str | None
    details: Any
    #: The report's ``data`` object as received (an incident's ``original``).
    raw: Mapping[str, Any]


def validate_diagnose(node: str, document: Any) -> DiagnoseReport:
    """Check a mond self-diagnose answer; raise :class:`MondError` naming ``node``.

    ``document`` is the decoded JSON answer: a mond report object whose
    ``data`` member is the diagnose script's object (``status``, ``command``,
    ``details``).
    """
    if not isinstance(document, Mapping):
        raise MondError(node, f"report is not a JSON object but {type(document).__name__}")
    data = document.get("data")
    if not isinstance(data, Mapping):
        raise MondError(node, "report has no 'data' object")
    # The answer was read with strictjson, but a document may come from
    # elsewhere (the agent, a test): check depth and NaN here too, without
    # recursion, so the report can be stored and served as strict JSON.
    if strictjson.depth_exceeds(data, MAX_DEPTH):
        raise MondError(node, f"report data is nested deeper than {MAX_DEPTH} levels")
    try:
        encoded = json.dumps(data, sort_keys=True, allow_nan=False)
    except ValueError:
        raise MondError(node, "report data holds NaN or Infinity (not JSON)") from None
    except TypeError as e:
        raise MondError(node, f"report data is not JSON: {e}") from None
    if len(encoded) > MAX_REPORT:
        raise MondError(node, f"report data is {len(encoded)} bytes, more than {MAX_REPORT}")
    status = data.get("status")
    if not isinstance(status, str):
        raise MondError(node, f"report status {status!r} is not a string")
    try:
        action = Action.from_wire(status)
    except ValueError:
        raise MondError(node, f"unknown report status {status[:64]!r}") from None
    command = data.get("command")
    if command == "":
        command = None
    if command is not None:
        if not isinstance(command, str):
            raise MondError(node, f"report command {command!r} is not a string")
        if not COMMAND_RE.match(command) or ".." in command:
            raise MondError(node, f"report command {command[:64]!r} is not a plain command name")
    return DiagnoseReport(
        node=node, status=action, command=command, details=data.get("details"), raw=dict(data)
    )


@implementer(IHandshakeListener)
class _Get(HTTPClient11):
    """One ``GET`` over a fresh connection (``Connection: close``).

    Much cheaper than an ``Agent`` per node: a round asks a thousand nodes.
    """

    def __init__(self, host: bytes, path: bytes, done: defer.Deferred[tuple[int, bytes]]) -> None:
        self.host = host
        self.path = path
        self.done = done
        self.code = 0
        self.size = 0

    def connectionMade(self) -> None:
        # One write: a round sends a thousand of these.
        assert self.transport is not None
        self.transport.write(
            b"GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n"
            b"Accept: application/json\r\n\r\n" % (self.path, self.host)
        )

    def handleStatus(self, version: bytes, status: bytes, message: bytes) -> None:
        try:
            self.code = int(status)
        except ValueError:
            self.code = -1

    def handleResponsePart(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_BODY:
            if not self.done.called:
                self.done.errback(_TooLarge())
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        super().handleResponsePart(data)

    #: Called once the TLS handshake is done (HTTPS only; Twisted calls
    #: ``handshakeCompleted`` on protocols wrapped by TLS).
    on_handshake: Callable[[], None] | None = None

    def handshakeCompleted(self) -> None:  # noqa: N802
        if self.on_handshake is not None:
            self.on_handshake()

    def handleResponse(self, response: bytes) -> None:
        if not self.done.called:
            self.done.callback((self.code, response))

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        if not self.done.called:
            self.done.errback(reason)


class _TooLarge(Exception):
    pass


class _GetFactory(protocol.ClientFactory):
    """Connects one :class:`_Get`; quiet (no start/stop log events)."""

    noisy = False

    def __init__(self, proto: _Get) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> _Get:
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.proto.done.called:
            self.proto.done.errback(reason)


async def _raw_get(reactor: Any, host: str, port: int, path: str,
                   tls: Any = None, after: Callable[[Any], None] | None = None,
                   on_handshake: Callable[[], None] | None = None) -> tuple[int, bytes]:
    """``GET path`` from ``host:port``: (status, body).  ``tls``: an
    ``IOpenSSLClientConnectionCreator`` for HTTPS (None: plain HTTP).

    Straight ``reactor.connectTCP`` with a quiet factory instead of an
    endpoint: fewer layers per request (a round makes one per node).
    Cancelling stops the connection attempt or aborts the connection.
    """
    connector: Any = None

    def abort(_: Any) -> None:
        if proto.transport is not None:
            proto.transport.abortConnection()  # type: ignore[attr-defined]
        elif connector is not None:
            try:
                connector.stopConnecting()
            except error.NotConnectingError:
                pass

    done: defer.Deferred[tuple[int, bytes]] = defer.Deferred(abort)
    proto = _Get(host.encode("ascii"), path.encode("ascii"), done)
    proto.on_handshake = on_handshake
    if tls is None:
        connector = reactor.connectTCP(host, port, _GetFactory(proto))
    else:
        connector = reactor.connectSSL(host, port, _GetFactory(proto), tls)
    result = await done
    if after is not None and proto.transport is not None:
        after(proto.transport)
    return result


class MondClient:
    """Asks nodes' monds for reports; see the module docstring."""

    #: Raised for one node's failure (the agent client raises its own kind).
    Error: type[MondError] = MondError
    scheme = "http"
    #: TLS connection creator (None: plain HTTP, as mond speaks).
    _tls: Any = None

    def __init__(
        self,
        reactor: Any,
        *,
        port: int = DEFAULT_PORT,
        timeout: float = 10.0,
        parallel: int = DEFAULT_PARALLEL,
        http: Any = None,
        diagnose_path: str = DEFAULT_DIAGNOSE_PATH,
    ) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {parallel}")
        if not diagnose_path.startswith("/"):
            raise ValueError(f"diagnose path {diagnose_path!r} must start with '/'")
        self._reactor = reactor
        self.port = port
        self.timeout = timeout
        self.parallel = parallel
        self.diagnose_path = diagnose_path
        self._http = http
        self._sem = defer.DeferredSemaphore(parallel)
        self._outstanding = defer.DeferredSemaphore(parallel * STALLED_FACTOR)
        #: Seconds after which a request without answer frees its slot.
        self.stall = min(1.0, timeout / 4)
        #: Nodes whose last request failed (asked first next time).
        self._failing: set[str] = set()

    @classmethod
    def from_config(cls, config: Any, reactor: Any, http: Any = None) -> MondClient:
        """Build from a ``DaemonConfig`` (``mond_port``, ``mond_timeout``, ...)."""
        return cls(
            reactor,
            port=config.mond_port,
            timeout=config.mond_timeout,
            parallel=config.mond_parallel,
            diagnose_path=config.mond_path,
            http=http,
        )

    def _tls_for(
        self, node: Node
    ) -> tuple[Any, Callable[[Any], None] | None, Callable[[], None] | None]:
        """TLS connection creator for ``node``, what to do with the transport
        after the answer, and what to do once the handshake is done (plain
        HTTP here: nothing)."""
        return self._tls, None, None

    async def close(self) -> None:
        """Nothing to release: every request uses its own connection."""

    def url(self, node: Node, path: str) -> str:
        if not node.pip:
            raise self.Error(node.name, "node has no primary IP")
        host = f"[{node.pip}]" if ":" in node.pip else node.pip
        return f"{self.scheme}://{host}:{self.port}{path}"

    async def _get_json(self, node: Node, path: str) -> Any:
        url = self.url(node, path)
        d = defer.Deferred.fromCoroutine(self._fetch(node, url))
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        call = self._reactor.callLater(self.timeout, expire)
        try:
            return await d
        except Exception:
            if timed_out:
                raise self.Error(node.name, f"no answer from {url} within {self.timeout:g}s") from None
            raise
        finally:
            if call.active():
                call.cancel()

    async def _fetch(self, node: Node, url: str) -> Any:
        if self._http is None:
            return await self._fetch_raw(node, url)
        try:
            response = await self._http.request("GET", url)
        except Exception as e:  # connection refused, DNS, TLS, ...
            raise self.Error(node.name, f"cannot reach {url}: {e}") from None
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > MAX_BODY:
                raise _TooLarge()
            chunks.append(data)

        try:
            await treq.collect(response, collect)
        except _TooLarge:
            raise self.Error(node.name, f"answer from {url} is larger than {MAX_BODY} bytes") from None
        except Exception as e:
            raise self.Error(node.name, f"reading answer from {url} failed: {e}") from None
        return self._parse(node, url, response.code, b"".join(chunks))

    async def _fetch_raw(self, node: Node, url: str) -> Any:
        path = url.split(str(self.port), 1)[1]
        try:
            code, body = await _raw_get(self._reactor, node.pip, self.port, path,
                                        *self._tls_for(node))
        except _TooLarge:
            raise self.Error(node.name, f"answer from {url} is larger than {MAX_BODY} bytes") from None
        except defer.CancelledError:
            raise
        except Exception as e:  # refused, reset, closed early
            text = getattr(e, "value", e)
            raise self.Error(node.name, f"cannot reach {url}: {text}") from None
        return self._parse(node, url, code, body)

    def _parse(self, node: Node, url: str, code: int, body: bytes) -> Any:
        """The document of an answer (the agent client verifies its signature)."""
        return self._decode(node, url, code, body)

    def _decode(self, node: Node, url: str, code: int, body: bytes) -> Any:
        """The JSON of a mond answer (the agent client verifies signatures instead)."""
        if code != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise self.Error(node.name, f"{url} answered HTTP {code}: {text}")
        try:
            return strictjson.loads(body, url, max_bytes=MAX_BODY, max_depth=MAX_DEPTH)
        except strictjson.StrictJSONError as e:
            raise self.Error(node.name, f"malformed JSON from {url}: {e.problem}") from None

    async def diagnose(self, node: Node) -> DiagnoseReport:
        """The node's validated self-diagnose report."""
        document = await self._get_json(node, self.diagnose_path)
        return validate_diagnose(node.name, document)

    async def report(self, node: Node, category: str, name: str) -> dict[str, Any]:
        """A raw mond report object (``{"name", "data", ...}``)."""
        for part in (category, name):
            if not _SAFE_PART.match(part):
                raise self.Error(node.name, f"bad report name {part!r}")
        document = await self._get_json(node, f"/1/report/{category}/{name}")
        if not isinstance(document, dict):
            raise self.Error(node.name, f"report {category}/{name} is not a JSON object")
        return document

    async def gather(
        self, nodes: Iterable[Node], fn: Callable[[Node], Awaitable[T]]
    ) -> dict[str, T | MondError]:
        """``fn(node)`` for every node, at most ``parallel`` active at a time.

        Never raises for one node's failure: the result maps each node name
        to ``fn``'s result or to the :class:`MondError` it raised (any other
        exception is wrapped in one).
        """

        async def one(node: Node) -> T | MondError:
            try:
                return await fn(node)
            except MondError as e:
                return e
            except Exception as e:
                log.failure("unexpected error asking {node}", node=node.name)
                return MondError(node.name, f"unexpected error: {e!r}")

        async def limited(node: Node) -> T | MondError:
            # A request holds one of ``parallel`` slots while it is active.
            # One that got no answer within ``stall`` seconds gives its slot
            # to the next node and keeps waiting for its own timeout (at most
            # ``STALLED_FACTOR * parallel`` requests outstanding in all), so
            # silent nodes do not hold up the rest.
            await self._outstanding.acquire()
            await self._sem.acquire()
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    self._sem.release()

            call = self._reactor.callLater(self.stall, release)
            try:
                return await one(node)
            finally:
                if call.active():
                    call.cancel()
                release()
                self._outstanding.release()

        # Nodes that did not answer last time go first: their timeouts then
        # overlap with the work on the others instead of adding to it.
        ordered = sorted(nodes, key=lambda n: n.name not in self._failing)
        names: list[str] = []
        ds: list[defer.Deferred[Any]] = []
        for node in ordered:
            names.append(node.name)
            ds.append(defer.Deferred.fromCoroutine(limited(node)))
        results = await defer.gatherResults(ds)
        out = dict(zip(names, results, strict=True))
        self._failing = {name for name, r in out.items() if isinstance(r, MondError)}
        return out
