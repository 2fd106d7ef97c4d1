"""Admin control socket: the operator's requests (root only).

A UNIX stream socket (``--ctl-socket``, default ``<state-dir>/ctl.sock``,
mode 0600) takes one JSON request line per connection and answers one JSON
line::

    {"op": "list"}                      -> {"ok": true, "state": {...}}
    {"op": "show", "uuid": "..."}       -> {"ok": true, "incident": {..., "job-details": [...]}}
    {"op": "cancel", "uuid": "..."}     -> {"ok": true, "uuid": "...", "incident": {...}}
    {"op": "forget", "uuid": "..."}     -> {"ok": true, "uuid": "..."}
    {"op": "round-now"}                 -> {"ok": true, "round": "started" | "queued"}
    errors                              -> {"ok": false, "error": "..."}

``uuid`` is an incident's uuid or a prefix of exactly one
(:func:`maintd.decide.incidents.resolve_incident`); the answer names the
full uuid.  Each op is one function registered in :data:`OPS` with
:func:`op` (add new ones the same way, each in its own block).

Only root (or the daemon's own user) may connect: the socket file is 0600
and the peer's credentials are checked.  The TCP HTTP API stays read-only.

Changes go to the store at once.  A round that is running holds its own
copy of the state (``ctx.state``); :func:`track` (called by the first round
step) lets this module update that copy too, so the round's later commits
keep the operator's change instead of reverting it.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from maintd.common import strictjson
from maintd.daemon import control_guard
from maintd.daemon.details import incident_details
from maintd.daemon.state import MaintState
from maintd.decide import incidents as I

log = Logger()

MAX_REQUEST = 4096

_live: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def track(ctx: Any) -> None:
    """Remember ``ctx`` as the live round context of its store."""
    store = getattr(ctx, "store", None)
    if store is not None:
        _live[store] = ctx


def live_context(store: Any) -> Any:
    return _live.get(store)


class StateAccess:
    """Reads and changes the daemon's state on behalf of the operator.

    ``rounds`` (the RoundService) and ``jobs`` (a JobInfo) are set by the
    daemon after construction; without them ``round-now`` and the job
    details of ``show`` say they are not available.
    """

    def __init__(self, store: Any, clock: Any) -> None:
        self.store = store
        self.clock = clock
        self.rounds: Any = None
        self.jobs: Any = None
        #: Builds the overview from a state (set by the daemon: the HTTP API's).
        self.overview: Callable[[MaintState], dict[str, Any]] | None = None

    def current(self) -> MaintState:
        ctx = live_context(self.store)
        return ctx.state if ctx is not None else self.store.state  # type: ignore[no-any-return]

    def update(self, fn: Callable[[MaintState], MaintState]) -> MaintState:
        new = fn(self.current())
        self.store.commit(new)
        ctx = live_context(self.store)
        if ctx is not None:
            ctx.state = new
        return new


def peer_uid(transport: Any) -> int | None:
    try:
        sock = transport.getHandle()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    except (AttributeError, OSError):
        return None


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST

    def __init__(self, access: StateAccess) -> None:
        self.access = access
        self.done = False
        #: One request per connection: further lines are ignored.
        self.handling = False

    def connectionMade(self) -> None:
        uid = peer_uid(self.transport)
        if uid is None or uid not in (0, os.getuid()):
            log.warn("control socket: refused peer uid {uid}", uid=uid)
            self.reply({"ok": False, "error": "permission denied"})

    def lineLengthExceeded(self, line: bytes) -> None:
        self.reply({"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})

    def reply(self, answer: dict[str, Any]) -> None:
        assert self.transport is not None
        if self.done:
            return
        self.done = True
        self.transport.write(json.dumps(answer).encode() + b"\n")
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if self.done or self.handling:
            return
        self.handling = True
        try:
            request = strictjson.loads(line, "request", max_bytes=MAX_REQUEST, max_depth=8)
        except strictjson.StrictJSONError as e:
            self.reply({"ok": False, "error": f"malformed request: {e.problem}"})
            return
        d = defer.Deferred.fromCoroutine(self._handled(request))
        d.addErrback(self._failed, request)
        d.addCallback(self.reply)

    async def _handled(self, request: Any) -> dict[str, Any]:
        result = self.handle(request)
        if isinstance(result, dict):
            return result
        return await result

    def _failed(self, failure: Any, request: Any) -> dict[str, Any]:
        if failure.check(I.IncidentError):
            return {"ok": False, "error": str(failure.value)}
        log.failure("control request {request!r} failed", failure, request=request)
        return {"ok": False, "error": f"internal error: {failure.value}"}

    def handle(self, request: Any) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": "request must be a JSON object with an 'op'"}
        handler = OPS.get(request["op"])
        if handler is None:
            return {"ok": False, "error": f"unknown op {request['op']!r}"}
        result = handler(self.access, request)
        if isinstance(result, dict):
            return result
        return defer.Deferred.fromCoroutine(_awaited(result))


async def _awaited(result: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return await result


# --- the ops: one function each, registered by name --------------------------

Handler = Callable[[StateAccess, dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]
#: op name -> handler(access, request) -> answer (or an awaitable of it).
OPS: dict[str, Handler] = {}


def op(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        OPS[name] = fn
        return fn

    return register


def _uuid_arg(name: str, request: dict[str, Any]) -> str:
    uuid = request.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise I.IncidentError(f"{name} needs an incident 'uuid'")
    return uuid


@op("list")
def _list(access: StateAccess, request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "state": access.current().to_json()}


@op("show")
async def _show(access: StateAccess, request: dict[str, Any]) -> dict[str, Any]:
    inc = I.resolve_incident(access.current(), _uuid_arg("show", request))
    return {"ok": True, "incident": await incident_details(inc, access.jobs)}


@op("cancel")
def _cancel(access: StateAccess, request: dict[str, Any]) -> dict[str, Any]:
    uuid = I.resolve_incident(access.current(), _uuid_arg("cancel", request)).uuid
    now = access.clock.seconds()
    new = access.update(lambda s: I.cancel_incident(s, uuid, now))
    log.info("operator canceled incident {uuid}", uuid=uuid)
    inc = new.incident(uuid)
    return {"ok": True, "uuid": uuid, "incident": inc.to_json() if inc else None}


@op("forget")
def _forget(access: StateAccess, request: dict[str, Any]) -> dict[str, Any]:
    uuid = I.resolve_incident(access.current(), _uuid_arg("forget", request)).uuid
    access.update(lambda s: I.forget_incident(s, uuid))
    log.info("operator forgot incident {uuid}", uuid=uuid)
    return {"ok": True, "uuid": uuid}


@op("round-now")
def _round_now(access: StateAccess, request: dict[str, Any]) -> dict[str, Any]:
    if access.rounds is None:
        return {"ok": False, "error": "this daemon has no round service"}
    outcome = access.rounds.run_now()
    if outcome == "stopping":
        return {"ok": False, "error": "the daemon is stopping; no round starts"}
    return {"ok": True, "round": outcome, "number": access.rounds.rounds + (outcome == "queued")}


def _guard_op(name: str) -> Handler:
    """The guardrails' ops (maintd.daemon.control_guard) in this table."""

    def handler(access: StateAccess, request: dict[str, Any]) -> dict[str, Any]:
        answer = control_guard.handle(access, name, request)
        assert answer is not None  # name is one of control_guard.OPS
        return answer

    return handler


for _name in control_guard.OPS:
    OPS[_name] = _guard_op(_name)


class ControlFactory(protocol.Factory):
    def __init__(self, access: StateAccess) -> None:
        self.access = access

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self.access)


class ControlService(service.Service):
    """Listens on the control socket while running."""

    def __init__(self, path: str, store: Any, reactor: Any) -> None:
        self.path = path
        self.reactor = reactor
        self.access = StateAccess(store, reactor)
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        try:
            self._listen()
        except Exception as e:
            # The admin tool is not worth stopping the daemon for: say why.
            log.error("control socket {path} not available, ganeti-maintd-ctl will not work: "
                      "{error}", path=self.path, error=e)

    def _listen(self) -> None:
        if len(os.fsencode(self.path)) >= 108:
            raise ValueError(f"path is {len(os.fsencode(self.path))} bytes; UNIX sockets allow 107")
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise ValueError("the path exists and is not a socket")
            os.unlink(self.path)  # stale socket; the state dir lock makes us the only daemon
        old = os.umask(0o177)
        try:
            self._port = self.reactor.listenUNIX(self.path, ControlFactory(self.access), mode=0o600)
        finally:
            os.umask(old)
        if os.path.exists(self.path):  # a real socket (not a test reactor's)
            os.chmod(self.path, 0o600)
        log.info("control socket on {path}", path=self.path)

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return None
