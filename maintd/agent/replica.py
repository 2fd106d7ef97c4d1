"""The agent's copy of the daemon's state (state replication, issue 13 item 2).

After each commit the daemon ``PUT``s its state to the agents on the master
candidates, as a signed envelope (:mod:`maintd.common.signing`, cluster HMAC
key) whose message is ``{"schema": N, "serial": S, "state": {...}}``.  The
agent keeps the newest copy by serial, durably (temporary file, fsync,
rename, directory fsync), and hands it back unchanged on ``GET``, so a
daemon starting on a new master verifies the signature of the daemon that
wrote it, not the agent's.

- ``PUT /1/replica``: 200 ``{"stored": S}``; 409 ``{"kept": S}`` when the
  agent holds the same or a newer serial; 403 for a bad or stale signature
  and 400 for a message that is not a replica -- one log line each, nothing
  stored.  The agent does not interpret ``state`` (a newer daemon may write
  a newer schema; the daemon reading it decides).
- ``GET /1/replica``: 200 with the stored envelope, 404 when there is none.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from maintd.common import atomicfile, signing, strictjson

log = Logger()

FILE_NAME = "replica.json"
#: Largest replica accepted (bytes of the envelope).
MAX_REPLICA = 16 * 1024 * 1024


class ReplicaError(Exception):
    """A replica that is not accepted; ``code`` is the HTTP status to answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_payload(payload: Any, source: str) -> int:
    """The serial of a replica message; :class:`ReplicaError` (400) when it is not one."""
    if not isinstance(payload, dict):
        raise ReplicaError(400, f"{source}: replica message is not an object")
    for key in ("schema", "serial"):
        value = payload.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ReplicaError(400, f"{source}: replica {key} is not a non-negative integer")
    if not isinstance(payload.get("state"), dict):
        raise ReplicaError(400, f"{source}: replica has no state object")
    return int(payload["serial"])


class ReplicaStore:
    """The newest replica, kept in ``<state-dir>/replica.json`` (None: memory only)."""

    def __init__(self, state_dir: str | None, key: bytes,
                 wallclock: Callable[[], float]) -> None:
        self.path = os.path.join(state_dir, FILE_NAME) if state_dir else None
        self.key = key
        self.wallclock = wallclock
        self.envelope: bytes | None = None
        self.serial = -1
        if self.path is not None:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_REPLICA + 1)
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("replica {path} unreadable ({error}); starting without one",
                      path=self.path, error=e.strerror)
            return
        try:
            # our own file: the signature time is old by nature, no window
            payload, _ = signing.loads(data, self.key, self.wallclock(), source=self.path,
                                       window=float("inf"), max_bytes=MAX_REPLICA)
            serial = check_payload(payload, self.path)
        except (strictjson.StrictJSONError, signing.SignatureError, ReplicaError) as e:
            log.error("replica {path} ignored: {error}", path=self.path, error=e)
            return
        self.envelope, self.serial = data, serial

    def put(self, body: bytes, source: str) -> tuple[int, dict[str, Any]]:
        """Store ``body`` when it is a valid, newer replica: (HTTP code, answer)."""
        try:
            if len(body) > MAX_REPLICA:
                raise ReplicaError(413, f"{source}: replica larger than {MAX_REPLICA} bytes")
            try:
                payload, _ = signing.loads(body, self.key, self.wallclock(), source=source,
                                           max_bytes=MAX_REPLICA)
            except strictjson.StrictJSONError as e:
                raise ReplicaError(400, str(e)) from None
            except signing.SignatureError as e:
                raise ReplicaError(403, f"{source}: {e.detail}") from None
            serial = check_payload(payload, source)
        except ReplicaError as e:
            log.warn("replica refused: {error}", error=e)
            return e.code, {"error": str(e)}
        if serial <= self.serial:
            return 409, {"kept": self.serial}
        if self.path is not None:
            try:
                atomicfile.replace(self.path, body)
            except OSError as e:
                log.error("replica serial {serial} not stored: {path}: {error}",
                          serial=serial, path=self.path, error=e.strerror)
                return 500, {"error": f"cannot write {self.path}: {e.strerror}"}
        self.envelope, self.serial = body, serial
        log.debug("replica serial {serial} stored", serial=serial)
        return 200, {"stored": serial}
