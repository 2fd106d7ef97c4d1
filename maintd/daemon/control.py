"""Admin control socket: list, cancel and forget incidents (root only).

A UNIX stream socket (``--ctl-socket``, default ``<state-dir>/ctl.sock``,
mode 0600) takes one JSON request line per connection and answers one JSON
line::

    {"op": "list"}                      -> {"ok": true, "state": {...}}
    {"op": "cancel", "uuid": "..."}     -> {"ok": true, "incident": {...}}
    {"op": "forget", "uuid": "..."}     -> {"ok": true}
    errors                              -> {"ok": false, "error": "..."}

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
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from maintd.common import strictjson
from maintd.daemon import control_guard
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
    """Reads and changes the daemon's state on behalf of the operator."""

    def __init__(self, store: Any, clock: Any) -> None:
        self.store = store
        self.clock = clock
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
        if self.done:
            return
        try:
            request = strictjson.loads(line, "request", max_bytes=MAX_REQUEST, max_depth=8)
        except strictjson.StrictJSONError as e:
            self.reply({"ok": False, "error": f"malformed request: {e.problem}"})
            return
        try:
            self.reply(self.handle(request))
        except I.IncidentError as e:
            self.reply({"ok": False, "error": str(e)})
        except Exception as e:
            log.failure("control request {request!r} failed", request=request)
            self.reply({"ok": False, "error": f"internal error: {e}"})

    def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": "request must be a JSON object with an 'op'"}
        op = request["op"]
        if op == "list":
            return {"ok": True, "state": self.access.current().to_json()}
        if op in ("cancel", "forget"):
            uuid = request.get("uuid")
            if not isinstance(uuid, str) or not uuid:
                return {"ok": False, "error": f"{op} needs an incident 'uuid'"}
            if op == "cancel":
                now = self.access.clock.seconds()
                new = self.access.update(lambda s: I.cancel_incident(s, uuid, now))
                log.info("operator canceled incident {uuid}", uuid=uuid)
                inc = new.incident(uuid)
                return {"ok": True, "incident": inc.to_json() if inc else None}
            self.access.update(lambda s: I.forget_incident(s, uuid))
            log.info("operator forgot incident {uuid}", uuid=uuid)
            return {"ok": True}
        answer = control_guard.handle(self.access, op, request)
        if answer is not None:
            return answer
        return {"ok": False, "error": f"unknown op {op!r}"}


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
