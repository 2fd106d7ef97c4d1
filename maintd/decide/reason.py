"""The reason text of every job maintd submits: one format, written and parsed here.

Ganeti keeps the ``reason=`` of a RAPI write in the reason trail of each
opcode of the job (``["gnt:user", TEXT, ns]``), and ``GET /2/jobs?bulk=1``
returns it in ``ops[i]["reason"]``.  That makes Ganeti's job queue the record
of what maintd submitted: a daemon that lost its state (master failover, a
state directory restored from an old copy, a crash between submitting a job
and committing its id) finds its jobs there again
(:mod:`maintd.decide.reconcile`).

Format (version 1)::

    maintd:1:<kind>:<id>:<digest>

- ``kind``: ``incident`` (``id`` is the incident uuid, lower-case 8-4-4-4-12
  hex), ``harep`` (``id`` names the harep repair or instance) or ``balance``
  (``id`` names the balancing round or plan);
- ``id``: 1-128 characters of ``[A-Za-z0-9_.-]``, starting alphanumeric
  (uuids, instance and node names, numbers);
- ``digest``: 1-64 lower-case hex digits, or ``-`` for none.  For an
  incident it is :func:`report_digest` of the node and the report that
  started the incident, so a daemon without state can tie the job to the
  failure the node reports now.

:func:`parse_reason` is strict: a text that does not parse (another tool's
reason, a hand-written one, a truncated one) is *not ours* and returns None.
For compatibility with jobs submitted before this format, the old
``maintd incident <uuid>`` text parses as an incident without digest.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

PREFIX = "maintd"
VERSION = "1"

INCIDENT = "incident"
HAREP = "harep"
BALANCE = "balance"
KINDS = frozenset({INCIDENT, HAREP, BALANCE})

#: Source Ganeti gives the ``reason=`` of a RAPI request in the reason trail.
USER_SOURCE = "gnt:user"
#: Hex digits of :func:`report_digest`.
DIGEST_LEN = 12
NO_DIGEST = "-"

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[0-9a-f]{1,64}$")
_TEXT = re.compile(
    r"^maintd:1:(?P<kind>[a-z]+):(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]{0,127}):(?P<digest>-|[0-9a-f]{1,64})$"
)
_LEGACY = re.compile(r"^maintd incident (?P<id>\S+)$")


class ReasonError(ValueError):
    """:func:`format_reason` was given a value the format cannot carry."""


def is_uuid(text: str) -> bool:
    """True for a lower-case 8-4-4-4-12 hex uuid (what maintd writes)."""
    return bool(_UUID.match(text))


@attrs.frozen
class Reason:
    kind: str
    id: str
    #: "" when the job carried no digest
    digest: str = ""

    @property
    def text(self) -> str:
        return format_reason(self.kind, self.id, self.digest)


def format_reason(kind: str, id: str, digest: str | None = None) -> str:
    """The reason text of a job; :class:`ReasonError` for a value it cannot carry."""
    if kind not in KINDS:
        raise ReasonError(f"unknown reason kind {kind!r} (one of {', '.join(sorted(KINDS))})")
    if not isinstance(id, str) or not _ID.match(id):
        raise ReasonError(f"reason id {id!r} is not 1-128 characters of [A-Za-z0-9_.-]")
    if kind == INCIDENT and not is_uuid(id):
        raise ReasonError(f"incident id {id!r} is not a uuid")
    if not digest or digest == NO_DIGEST:
        digest = NO_DIGEST
    elif not _DIGEST.match(digest):
        raise ReasonError(f"reason digest {digest!r} is not 1-64 lower-case hex digits")
    return f"{PREFIX}:{VERSION}:{kind}:{id}:{digest}"


def parse_reason(text: Any) -> Reason | None:
    """The :class:`Reason` of ``text``, or None when it is not a maintd reason."""
    if not isinstance(text, str):
        return None
    m = _TEXT.match(text)
    if m:
        kind, ident, digest = m.group("kind", "id", "digest")
        if kind not in KINDS or (kind == INCIDENT and not is_uuid(ident)):
            return None
        return Reason(kind, ident, "" if digest == NO_DIGEST else digest)
    m = _LEGACY.match(text)
    if m and is_uuid(m.group("id")):
        return Reason(INCIDENT, m.group("id"), "")
    return None


def report_digest(node: str, report: Mapping[str, Any]) -> str:
    """Short digest of one node's failure report (node uuid or name, report object).

    Canonical JSON (sorted keys, no spaces) hashed with SHA-256, first
    :data:`DIGEST_LEN` hex digits.  Equal (node, report) pairs -- the pair
    that identifies an incident -- give equal digests.
    """
    doc = json.dumps({"node": node, "report": report}, sort_keys=True, separators=(",", ":"),
                     ensure_ascii=True, default=str)
    return hashlib.sha256(doc.encode("ascii")).hexdigest()[:DIGEST_LEN]


def trail_reason(trail: Any) -> Reason | None:
    """Our reason in one opcode's reason trail (``[[source, text, ns], ...]``), else None.

    Only the ``gnt:user`` entries (the ``reason=`` of the request) count.
    """
    if not isinstance(trail, list):
        return None
    for entry in trail:
        if (
            isinstance(entry, list | tuple)
            and len(entry) >= 2
            and entry[0] == USER_SOURCE
        ):
            found = parse_reason(entry[1])
            if found is not None:
                return found
    return None


def job_reason(ops: Iterable[Any] | None) -> Reason | None:
    """Our reason in a job's ``ops`` (first opcode whose trail carries one), else None."""
    if not isinstance(ops, list | tuple):
        return None
    for op in ops:
        if isinstance(op, Mapping):
            found = trail_reason(op.get("reason"))
            if found is not None:
                return found
    return None
