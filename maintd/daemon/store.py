"""Durable, atomic persistence of the daemon's :class:`~maintd.daemon.state.MaintState`.

One JSON document, ``<state-dir>/state.json``, rewritten whole on every
change: the new text goes to ``state.json.tmp``, which is fsync'ed, renamed
over ``state.json``, and then the directory is fsync'ed.  A crash at any
point leaves either the old or the new document, never a mix.  The state is
small (incidents, job ids, instance names), so rewriting it is cheap, and a
plain JSON file is what an operator can read, back up and diff.

The document carries ``format`` and ``schema``; a file that is unreadable,
not JSON, of another format or of an unknown schema is a :class:`StoreError`
naming the file, raised at startup so the daemon refuses to start rather than
losing the incidents it holds.  A lock file (``flock``) keeps a second daemon
off the same state dir.

The in-memory copy (:attr:`StateStore.state`) always equals what is on disk;
:meth:`StateStore.commit` returns only after the new state is durable, then
tells its listeners (the HTTP API rebuilds its bodies).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.logger import Logger

from maintd.common import atomicfile, strictjson
from maintd.daemon.state import Incident, MaintState

log = Logger()

STATE_FORMAT = "ganeti-maintd-state"
STATE_NAME = "state.json"
LOCK_NAME = "lock"
#: Largest state file read: far above any real one (incidents are few, each
#: holding a report of at most maintd.cluster.mond.MAX_REPORT bytes).
MAX_STATE_BYTES = 64 * 1024 * 1024


class StoreError(Exception):
    """The state store cannot be read, written or locked; names the file."""


Listener = Callable[[MaintState], None]


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class IncidentCodec:
    """Encodes incident lists as compact JSON, each incident once.

    Incidents are immutable, so an incident object's JSON never changes: it
    is cached (by identity) as long as the incident is in the last list
    encoded.  Re-encoding a state where few incidents changed costs a join.
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Incident, bytes]] = {}

    def encode(self, incidents: Iterable[Incident]) -> bytes:
        cache: dict[int, tuple[Incident, bytes]] = {}
        parts = []
        for inc in incidents:
            hit = self._cache.get(id(inc))
            if hit is None or hit[0] is not inc:
                hit = (inc, _compact(inc.to_json()))
            cache[id(inc)] = hit
            parts.append(hit[1])
        self._cache = cache
        return b"[" + b",".join(parts) + b"]"


def encode(state: MaintState, codec: IncidentCodec | None = None) -> bytes:
    """The state document, ``{"format": ..., **state.to_json()}`` as one line
    of compact JSON (``python -m json.tool`` pretty-prints it).

    The incident list comes from ``codec`` (each incident encoded once);
    every other field from ``MaintState.to_json`` itself, so fields added to
    the state are stored without a change here.
    """
    rest = attrs.evolve(state, incidents=()).to_json()
    rest.pop("incidents", None)
    doc: dict[str, Any] = {"format": STATE_FORMAT, **rest}
    incidents = (codec or IncidentCodec()).encode(state.incidents)
    return _compact(doc)[:-1] + b',"incidents":' + incidents + b"}\n"


def decode(data: bytes, path: str) -> MaintState:
    """Parse a state document; :class:`StoreError` naming ``path`` on any problem."""
    try:
        doc = strictjson.loads(data, f"state file {path}", max_bytes=MAX_STATE_BYTES)
    except strictjson.StrictJSONError as e:
        raise StoreError(f"state file {path} is corrupt ({e.problem})") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise StoreError(f"state file {path} is not a {STATE_FORMAT} document")
    try:
        return MaintState.from_json(doc)
    except ValueError as e:
        raise StoreError(f"state file {path} cannot be loaded: {e}") from None
    except (KeyError, TypeError) as e:
        raise StoreError(f"state file {path} cannot be loaded: {e!r}") from None


class StateStore:
    """The state file in ``state_dir``; open with :meth:`open`."""

    def __init__(self, state_dir: str, state: MaintState, lock_fd: int | None) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_NAME)
        self.tmp_path = self.path + ".tmp"
        self._state = state
        self._lock_fd = lock_fd
        self._listeners: list[Listener] = []
        self._codec = IncidentCodec()

    @classmethod
    def open(cls, state_dir: str, *, lock: bool = True) -> StateStore:
        """Load (or start empty) the state of ``state_dir``, creating it (0700).

        Raises :class:`StoreError` when the directory cannot be made, another
        daemon holds it, or the state file is unreadable or corrupt.
        """
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create state dir {state_dir}: {e.strerror}") from None
        lock_fd = cls._lock(state_dir) if lock else None
        try:
            state = cls._load(os.path.join(state_dir, STATE_NAME))
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        store = cls(state_dir, state, lock_fd)
        if os.path.exists(store.tmp_path):
            # Left over by a crash before the rename: the state file is the
            # truth, the temp file an unfinished write.
            log.warn("removing unfinished state write {path}", path=store.tmp_path)
            os.unlink(store.tmp_path)
        log.info(
            "state loaded from {path}: {n} incidents, {j} jobs",
            path=store.path,
            n=len(state.incidents),
            j=len(state.jobs),
        )
        return store

    @staticmethod
    def _lock(state_dir: str) -> int:
        path = os.path.join(state_dir, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreError(
                    f"state dir {state_dir} is in use by another ganeti-maintd (lock {path})"
                ) from None
            raise StoreError(f"cannot lock {path}: {e.strerror}") from None
        return fd

    @staticmethod
    def _load(path: str) -> MaintState:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return MaintState()
        except OSError as e:
            raise StoreError(f"cannot read state file {path}: {e.strerror}") from None
        return decode(data, path)

    @property
    def state(self) -> MaintState:
        return self._state

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(state)`` after every commit (and now, once)."""
        self._listeners.append(listener)
        listener(self._state)

    def commit(self, new: MaintState) -> None:
        """Make ``new`` the durable state; returns once it is on disk.

        On failure (disk full, permissions) raises :class:`StoreError`; the
        file and the in-memory state stay the old ones.
        """
        if new is self._state or new == self._state:
            return
        self._write(attrs.evolve(new, serial=max(self._state.serial, new.serial) + 1))

    def raise_serial(self, at_least: int) -> None:
        """Write the state again with a serial above ``at_least`` (an agent
        holds a replica with that serial, written by an earlier master)."""
        if self._state.serial <= at_least:
            self._write(attrs.evolve(self._state, serial=at_least + 1))

    def _write(self, new: MaintState) -> None:
        data = encode(new, self._codec)
        try:
            atomicfile.replace(self.path, data, self.tmp_path)
        except OSError as e:
            raise StoreError(f"cannot write state file {self.path}: {e.strerror or e}") from None
        self._state = new
        for listener in list(self._listeners):
            try:
                listener(new)
            except Exception:
                log.failure("state listener {listener!r} failed", listener=listener)

    def close(self) -> None:
        """Release the state dir lock (the state stays on disk)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
