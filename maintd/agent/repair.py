"""Live repairs on the node: ``POST /1/repair``.

The daemon sends a body signed with the cluster HMAC key (see
:mod:`maintd.common.signing`) whose message is::

    {"node": NAME, "incident": UUID, "command": NAME, "report": {...},
     "nonce": RANDOM, "time": UNIX-SECONDS}

The agent refuses (nothing run, one log line, 4xx answer) a request that is
unsigned, badly signed, stale (signature time or ``time`` outside the
window), for another node, already seen (same nonce: a replay), or for a
command that is not whitelisted in the repair directory.  Otherwise it runs
the command with the report JSON on stdin under the repair timeout, one
repair at a time (a second request meanwhile gets 409), and answers the
exit status and a bounded output tail.

Each incident runs at most once: its result is recorded durably under the
state directory before the answer is sent (and a "running" mark before the
command starts), so a request repeated for the same incident returns the
recorded result, also after a restart; a repair interrupted by a restart is
reported as failed, never run again.  Nonces are kept durably for twice the
freshness window (older requests are refused as stale anyway).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.logger import Logger

from maintd.agent import runner, whitelist
from maintd.common import signing, strictjson

log = Logger()

FIELDS = frozenset({"node", "incident", "command", "report", "nonce", "time"})
INCIDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
#: Largest request body (bytes).
MAX_REQUEST = 64 * 1024
#: Output tail kept from a repair command (bytes).
MAX_TAIL = 8 * 1024


class RepairRefused(Exception):
    """A request that is refused; ``code`` is the HTTP status to answer."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@attrs.frozen
class RepairRequest:
    node: str
    incident: str
    command: str
    report: dict[str, Any]
    nonce: str
    time: float


def parse_request(
    body: bytes, key: bytes, now: float, *, node: str, window: float = signing.DEFAULT_WINDOW
) -> RepairRequest:
    """Verify and decode a request body; :class:`RepairRefused` says why not."""
    source = "repair request"
    try:
        payload, _ = signing.loads(body, key, now, source=source, window=window,
                                   max_bytes=MAX_REQUEST)
    except strictjson.StrictJSONError as e:
        raise RepairRefused(400, str(e)) from None
    except signing.SignatureError as e:
        raise RepairRefused(403, f"{source} refused: {e.detail}") from None
    if not isinstance(payload, dict) or set(payload) != FIELDS:
        raise RepairRefused(400, f"{source}: the message must have exactly the members "
                            f"{', '.join(sorted(FIELDS))}")
    target, incident, command = payload["node"], payload["incident"], payload["command"]
    nonce, when, report = payload["nonce"], payload["time"], payload["report"]
    if not isinstance(incident, str) or not INCIDENT_RE.match(incident):
        raise RepairRefused(400, f"{source}: bad incident id {str(incident)[:64]!r}")
    if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
        raise RepairRefused(400, f"{source} for incident {incident}: bad nonce")
    if not isinstance(report, dict):
        raise RepairRefused(400, f"{source} for incident {incident}: report is not an object")
    if isinstance(when, bool) or not isinstance(when, (int, float)) or abs(now - when) > window:
        raise RepairRefused(403, f"{source} for incident {incident} refused: its time is "
                            f"outside the {window:g}s window")
    if target != node:
        raise RepairRefused(403, f"{source} for incident {incident} refused: it is for node "
                            f"{str(target)[:128]!r}, this is {node}")
    try:
        whitelist.check_name(command)
    except whitelist.WhitelistError as e:
        raise RepairRefused(403, f"{source} for incident {incident} refused: {e}") from None
    return RepairRequest(node=target, incident=incident, command=command, report=report,
                         nonce=nonce, time=float(when))


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class RepairState:
    """Seen nonces and per-incident results; durable under ``directory``
    (in memory only when ``directory`` is None: the simulator)."""

    def __init__(self, directory: str | None, window: float = signing.DEFAULT_WINDOW) -> None:
        self.directory = directory
        self.keep = 2 * window
        self.nonces: dict[str, float] = {}
        self.results: dict[str, dict[str, Any]] = {}
        if directory is not None:
            os.makedirs(os.path.join(directory, "results"), mode=0o700, exist_ok=True)
            self._load()

    @property
    def _nonce_file(self) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, "nonces.json")

    def _result_file(self, incident: str) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, "results", incident + ".json")

    def _load(self) -> None:
        try:
            with open(self._nonce_file, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        nonces = strictjson.loads(data, self._nonce_file, max_bytes=64 * 1024 * 1024,
                                  max_depth=4)
        if not isinstance(nonces, dict):
            raise ValueError(f"{self._nonce_file}: not a JSON object")
        self.nonces = {str(k): float(v) for k, v in nonces.items()}

    def seen(self, nonce: str) -> bool:
        return nonce in self.nonces

    def remember(self, nonce: str, now: float) -> None:
        self.nonces = {k: t for k, t in self.nonces.items() if now - t <= self.keep}
        self.nonces[nonce] = now
        if self.directory is not None:
            _write_atomic(self._nonce_file, json.dumps(self.nonces).encode())

    def result(self, incident: str) -> dict[str, Any] | None:
        if incident in self.results or self.directory is None:
            return self.results.get(incident)
        path = self._result_file(incident)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        rec = strictjson.loads(data, path, max_bytes=1024 * 1024, max_depth=32)
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: not a JSON object")
        self.results[incident] = rec
        return rec

    def record(self, incident: str, rec: dict[str, Any]) -> None:
        if self.directory is not None:
            _write_atomic(self._result_file(incident), json.dumps(rec, sort_keys=True).encode())
        self.results[incident] = rec


Execute = Callable[[str, bytes], Awaitable[runner.RunResult]]


class RepairService:
    """Checks and runs repair requests (see the module docstring)."""

    def __init__(
        self,
        *,
        node: str,
        key: bytes,
        state: RepairState,
        resolve: Callable[[str], str],
        execute: Execute,
        timeout: float,
        wallclock: Callable[[], float],
        window: float = signing.DEFAULT_WINDOW,
    ) -> None:
        self.node = node
        self.key = key
        self.state = state
        self.resolve = resolve
        self.execute = execute
        self.timeout = timeout
        self.wallclock = wallclock
        self.window = window
        #: Incident whose command is running now (None: idle).
        self.running: str | None = None
        self.runs = 0

    async def handle(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON answer for one request body."""
        try:
            return await self._handle(body)
        except RepairRefused as e:
            log.warn("{reason}; nothing run", reason=e.reason)
            return e.code, {"error": e.reason}

    async def _handle(self, body: bytes) -> tuple[int, dict[str, Any]]:
        now = self.wallclock()
        req = parse_request(body, self.key, now, node=self.node, window=self.window)
        if self.state.seen(req.nonce):
            raise RepairRefused(403, f"repair request for incident {req.incident} refused: "
                                "replayed (its nonce was seen before)")
        self.state.remember(req.nonce, now)
        recorded = self.state.result(req.incident)
        if recorded is not None:
            if recorded.get("state") == "running":
                if self.running == req.incident:
                    raise RepairRefused(409, f"repair {req.command} for incident "
                                        f"{req.incident} is still running")
                # the agent stopped while it ran: report, never run twice
                recorded = self._result(req, runner.RunResult(exit_status=None),
                                        "the agent stopped while the repair ran; "
                                        "not run again", now)
                self.state.record(req.incident, recorded)
            log.info("repair for incident {incident} repeated: answering the recorded result",
                     incident=req.incident)
            return 200, dict(recorded, recorded=True)
        if self.running is not None:
            raise RepairRefused(409, f"repair request for incident {req.incident} refused: "
                                f"the repair of incident {self.running} is running")
        try:
            path = self.resolve(req.command)
        except whitelist.WhitelistError as e:
            raise RepairRefused(403, f"repair request for incident {req.incident} refused: "
                                f"{e}") from None
        self.running = req.incident
        try:
            self.state.record(req.incident, {"state": "running", "incident": req.incident,
                                             "command": req.command, "node": self.node,
                                             "started": now})
            log.info("repair {command} for incident {incident}: running {path}",
                     command=req.command, incident=req.incident, path=path)
            self.runs += 1
            stdin = json.dumps(req.report, sort_keys=True).encode()
            result = await self.execute(path, stdin)
            problem = result.describe(f"repair command {req.command}", self.timeout, 0)
            rec = self._result(req, result, problem, self.wallclock())
            self.state.record(req.incident, rec)
        finally:
            self.running = None
        if problem:
            log.warn("repair {command} for incident {incident} failed: {problem}",
                     command=req.command, incident=req.incident, problem=problem)
        else:
            log.info("repair {command} for incident {incident} succeeded",
                     command=req.command, incident=req.incident)
        return 200, dict(rec, recorded=False)

    def _result(self, req: RepairRequest, result: runner.RunResult, problem: str,
                now: float) -> dict[str, Any]:
        return {
            "state": "done",
            "node": self.node,
            "incident": req.incident,
            "command": req.command,
            "ok": not problem,
            "exit_status": result.exit_status,
            "signal": result.signal,
            "timed_out": result.timed_out,
            "reason": problem,
            "output": result.tail.decode("utf-8", "replace"),
            "finished": now,
        }
