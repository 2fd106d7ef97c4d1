"""State replication, the pure part: what is sent, and which copy a starting daemon takes.

After each commit the daemon sends :func:`payload` (signed with the cluster
HMAC key) to the agents on the master candidates (:mod:`maintd.agent.replica`
keeps the newest by serial).  A daemon starting with no local state, or an
older one, takes the newest valid copy (:func:`choose`) before its first
round and then reconciles it with Ganeti's job queue
(:mod:`maintd.decide.reconcile`).  A copy with a bad signature, from a
future schema, or whose state does not parse is ignored with a note naming
the node -- never an error, never used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from maintd.common import signing, strictjson
from maintd.daemon.state import STATE_SCHEMA_VERSION, MaintState

#: Largest replica read (bytes of the signed envelope).
MAX_REPLICA = 16 * 1024 * 1024


def payload(state: MaintState) -> dict[str, Any]:
    """The replica message of ``state`` (its serial is the store's)."""
    return {"schema": STATE_SCHEMA_VERSION, "serial": state.serial, "state": state.to_json()}


@attrs.frozen
class Choice:
    #: The copy to take (None: keep the local state).
    state: MaintState | None
    serial: int = 0
    node: str = ""
    #: One line per copy that was ignored, naming the node (logged as warnings).
    notes: tuple[str, ...] = ()
    #: Why the local state was kept although there were valid copies (info).
    kept: str = ""


def choose(copies: Mapping[str, bytes], key: bytes, now: float, local_serial: int) -> Choice:
    """The newest valid copy when it is newer than ``local_serial``.

    ``copies``: node name -> the envelope its agent returned.  The signature
    must match ``key``; its time is not checked (a copy is as old as the
    daemon's last commit).
    """
    best: tuple[int, str, MaintState] | None = None
    notes: list[str] = []
    for node in sorted(copies):
        source = f"replica from the agent on {node}"
        try:
            doc, _ = signing.loads(copies[node], key, now, source=source, window=float("inf"),
                                   max_bytes=MAX_REPLICA)
        except strictjson.StrictJSONError as e:
            notes.append(f"{source} ignored: {e}")
            continue
        except signing.SignatureError as e:
            notes.append(f"{source} ignored: {e.kind}: {e.detail}")
            continue
        problem = _problem(doc)
        if problem:
            notes.append(f"{source} ignored: {problem}")
            continue
        try:
            state = MaintState.from_json(doc["state"])
        except (ValueError, TypeError, AttributeError) as e:
            notes.append(f"{source} ignored: its state does not parse: {e}")
            continue
        serial = int(doc["serial"])
        state = attrs.evolve(state, serial=serial)
        if best is None or serial > best[0]:
            best = (serial, node, state)
    if best is None or best[0] <= local_serial:
        kept = "" if best is None else (
            f"newest replica (serial {best[0]}, {best[1]}) is not newer than the local state "
            f"(serial {local_serial}): local state kept")
        return Choice(None, notes=tuple(notes), kept=kept)
    return Choice(best[2], best[0], best[1], tuple(notes))


def _problem(doc: Any) -> str:
    if not isinstance(doc, Mapping):
        return "not a replica object"
    schema, serial = doc.get("schema"), doc.get("serial")
    if not isinstance(schema, int) or isinstance(schema, bool):
        return f"schema {schema!r} is not a number"
    if schema > STATE_SCHEMA_VERSION:
        return (f"written with state schema {schema}, newer than this daemon's "
                f"{STATE_SCHEMA_VERSION} (a newer ganeti-maintd)")
    if schema != STATE_SCHEMA_VERSION:
        return f"unsupported state schema {schema}"
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        return f"serial {serial!r} is not a non-negative integer"
    if not isinstance(doc.get("state"), Mapping):
        return "no state object"
    return ""
