"""The daemon's own state: incidents, awaited jobs, evacuated instances.

Pure values (frozen ``attrs``), changed only by building new values with
``attrs.evolve``.  :mod:`maintd.daemon.store` persists a :class:`MaintState`
durably; :mod:`maintd.daemon.api` serves it; the round steps compute new states.

The JSON shape of an incident is the man page's (``/1/status``): ``uuid``,
``node``, ``original``, ``action``, ``repair-status``, ``jobs``, ``tag``,
``ctime``, ``mtime``, ``serial_no`` (plus ``node-name`` and ``reason``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

STATE_SCHEMA_VERSION = 1

TAG_READY = "maintd:repairready:"
TAG_FAILED = "maintd:repairfailed:"


class Action(enum.IntEnum):
    """Self-diagnose verdicts, least to most severe (2.17's RepairAction)."""

    OK = 0
    LIVE_REPAIR = 1
    EVACUATE = 2
    EVACUATE_FAILOVER = 3

    @property
    def wire(self) -> str:
        return _ACTION_WIRE[self]

    @classmethod
    def from_wire(cls, text: str) -> Action:
        try:
            return _WIRE_ACTION[text]
        except KeyError:
            raise ValueError(f"unknown self-diagnose status {text!r}") from None


_ACTION_WIRE = {
    Action.OK: "Ok",
    Action.LIVE_REPAIR: "live-repair",
    Action.EVACUATE: "evacuate",
    Action.EVACUATE_FAILOVER: "evacuate-failover",
}
_WIRE_ACTION = {v: k for k, v in _ACTION_WIRE.items()}


class RepairStatus(enum.IntEnum):
    """Incident progress (2.17's RepairStatus); above PENDING is final."""

    NOTED = 0
    PENDING = 1
    CANCELED = 2
    FAILED = 3
    COMPLETED = 4

    @property
    def wire(self) -> str:
        return self.name.lower()

    @property
    def finalized(self) -> bool:
        return self > RepairStatus.PENDING

    @classmethod
    def from_wire(cls, text: str) -> RepairStatus:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown repair status {text!r}") from None


#: Statuses whose incidents put a tag on the node (``tag-job``, ``tag-set``).
TAGGED = frozenset({RepairStatus.FAILED, RepairStatus.COMPLETED})


def _ints(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _strs(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


#: Fields an incident of the state file must have, and the types of the ones it has.
_REQUIRED = ("uuid", "node", "original", "action", "repair-status")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "uuid": str,
    "node": str,
    "node-name": str,
    "original": dict,
    "action": str,
    "repair-status": str,
    "jobs": list,
    "tag": str,
    "ctime": (int, float),
    "mtime": (int, float),
    "serial_no": int,
    "reason": str,
    "tag-job": (int, type(None)),
    "tag-set": bool,
    "digest": str,
}


@attrs.frozen
class Incident:
    uuid: str
    node: str  # node uuid, as in the man page
    node_name: str
    original: Mapping[str, Any]
    action: Action
    status: RepairStatus = RepairStatus.NOTED
    jobs: tuple[int, ...] = attrs.field(default=(), converter=_ints)
    tag: str = ""
    ctime: float = 0.0
    mtime: float = 0.0
    serial_no: int = 1
    reason: str = ""  # why it failed / was canceled, empty otherwise
    #: The job that puts ``tag`` on the node of a failed or completed
    #: incident (None: none submitted, or its job failed and it is due again).
    tag_job: int | None = None
    #: False from submitting that tag until it is known to be set (the job
    #: succeeded or the tag was seen on the node); the incident is forgotten
    #: on a missing tag only when True.  True in states written before.
    tag_set: bool = True
    #: Digest of the report that started the incident, as carried in the
    #: reason of its jobs (:mod:`maintd.decide.reason`).  Empty: computed from
    #: ``node`` and ``original``; set on an incident rebuilt from Ganeti's job
    #: queue before the node's report is known again.
    digest: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "node": self.node,
            "node-name": self.node_name,
            "original": dict(self.original),
            "action": self.action.wire,
            "repair-status": self.status.wire,
            "jobs": list(self.jobs),
            "tag": self.tag,
            "ctime": self.ctime,
            "mtime": self.mtime,
            "serial_no": self.serial_no,
            "reason": self.reason,
            "digest": self.digest,
        }
        if self.status in TAGGED:
            # Only incidents that get a tag say which job sets it and whether
            # it is set: a pending incident's node has no tag yet.
            out["tag-job"] = self.tag_job
            out["tag-set"] = self.tag_set
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Incident:
        """An incident from its ``/1/status`` object; ValueError naming the bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"not an object: {data!r}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError("missing " + ", ".join(repr(k) for k in missing))
        for key, kind in _TYPES.items():
            if key in data and not isinstance(data[key], kind):
                raise ValueError(f"{key!r} has the wrong type ({type(data[key]).__name__})")
        jobs = data.get("jobs", ())
        if not all(isinstance(j, int) and not isinstance(j, bool) for j in jobs):
            raise ValueError(f"'jobs' must be a list of job ids, not {jobs!r}")
        return cls(
            uuid=data["uuid"],
            node=data["node"],
            node_name=data.get("node-name", ""),
            original=data["original"],
            action=Action.from_wire(data["action"]),
            status=RepairStatus.from_wire(data["repair-status"]),
            jobs=data.get("jobs", ()),
            tag=data.get("tag", ""),
            ctime=float(data.get("ctime", 0.0)),
            mtime=float(data.get("mtime", 0.0)),
            serial_no=int(data.get("serial_no", 1)),
            reason=data.get("reason", ""),
            tag_job=data.get("tag-job"),
            tag_set=data.get("tag-set", True),
            digest=data.get("digest", ""),
        )

    @property
    def report_digest(self) -> str:
        """The digest its jobs carry: ``digest`` when set, else of (node, original)."""
        if self.digest:
            return self.digest
        from maintd.decide.reason import report_digest

        return report_digest(self.node or self.node_name, self.original)

    def changed(self, now: float, **changes: Any) -> Incident:
        """A copy with ``changes`` applied, ``mtime`` set and ``serial_no`` bumped."""
        return attrs.evolve(self, mtime=now, serial_no=self.serial_no + 1, **changes)


def _incidents(value: Iterable[Incident]) -> tuple[Incident, ...]:
    return tuple(value)


@attrs.frozen
class MaintState:
    incidents: tuple[Incident, ...] = attrs.field(default=(), converter=_incidents)
    jobs: tuple[int, ...] = attrs.field(default=(), converter=_ints)
    evacuated: tuple[str, ...] = attrs.field(default=(), converter=_strs)
    #: Free-form facts about the last round (number, times, error, dry-run plan).
    last_round: Mapping[str, Any] = attrs.field(factory=dict)
    #: harep repairs maintd started and has not finished, by repair id:
    #: ``{"instance": name, "jobs": [repair job ids], "tag_jobs": [tag update job ids]}``.
    harep: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    #: Bumped by every durable commit (:class:`maintd.daemon.store.StateStore`):
    #: the newest of two copies of the state (a local file, an agent's
    #: replica) has the higher serial.  Not part of equality: two states with
    #: the same content are equal whatever their serials.
    serial: int = attrs.field(default=0, eq=False)
    #: The guardrails' durable facts (:mod:`maintd.decide.guardrails`): the
    #: operator's pause (``"pause"``), the storm breaker (``"breaker"``), the
    #: last snapshot's ``maintd:pause`` tag (``"tag-pause"``) and the resolved
    #: ``"max-evacuating"``.  Plain JSON values; absent keys mean "not set".
    guard: Mapping[str, Any] = attrs.field(factory=dict)

    def incident(self, uuid: str) -> Incident | None:
        for inc in self.incidents:
            if inc.uuid == uuid:
                return inc
        return None

    def with_incident(self, incident: Incident) -> MaintState:
        """Replace the incident with the same uuid, or append it."""
        found = False
        out = []
        for inc in self.incidents:
            if inc.uuid == incident.uuid:
                out.append(incident)
                found = True
            else:
                out.append(inc)
        if not found:
            out.append(incident)
        return attrs.evolve(self, incidents=tuple(out))

    def without_incident(self, uuid: str) -> MaintState:
        return attrs.evolve(self, incidents=tuple(i for i in self.incidents if i.uuid != uuid))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA_VERSION,
            "incidents": [i.to_json() for i in self.incidents],
            "jobs": list(self.jobs),
            "evacuated": list(self.evacuated),
            "last_round": dict(self.last_round),
            "harep": {k: dict(v) for k, v in self.harep.items()},
            "serial": self.serial,
            "guard": dict(self.guard),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MaintState:
        schema = data.get("schema")
        if schema != STATE_SCHEMA_VERSION:
            raise ValueError(f"unsupported state schema {schema!r} (expected {STATE_SCHEMA_VERSION})")
        incidents = []
        seen: dict[str, int] = {}
        raw_incidents = data.get("incidents", [])
        if not isinstance(raw_incidents, list):
            raise ValueError(f"'incidents' must be a list, not {type(raw_incidents).__name__}")
        for n, raw in enumerate(raw_incidents, 1):
            uuid = raw.get("uuid") if isinstance(raw, Mapping) else None
            which = f"incident {n}" + (f" ({uuid})" if isinstance(uuid, str) else "")
            try:
                incident = Incident.from_json(raw)
            except ValueError as e:
                raise ValueError(f"{which}: {e}") from None
            if incident.uuid in seen:
                # Two incidents with one uuid would both be served and both
                # get jobs; which one is right cannot be known.
                raise ValueError(f"{which}: same uuid as incident {seen[incident.uuid]}")
            seen[incident.uuid] = n
            incidents.append(incident)
        jobs = data.get("jobs", ())
        if not isinstance(jobs, list | tuple) or not all(
            isinstance(j, int) and not isinstance(j, bool) for j in jobs
        ):
            raise ValueError(f"'jobs' must be a list of job ids, not {jobs!r}")
        serial = data.get("serial", 0)
        if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
            raise ValueError(f"'serial' must be a non-negative integer, not {serial!r}")
        evacuated = data.get("evacuated", [])
        if not isinstance(evacuated, list) or not all(isinstance(n, str) for n in evacuated):
            raise ValueError(f"'evacuated' must be a list of instance names, not {evacuated!r:.80}")
        last_round = data.get("last_round", {})
        if not isinstance(last_round, dict):
            raise ValueError(f"'last_round' must be an object, not {last_round!r:.80}")
        harep = data.get("harep", {})
        if not isinstance(harep, dict) or not all(isinstance(v, dict) for v in harep.values()):
            raise ValueError(f"'harep' must be an object of objects, not {harep!r:.80}")
        return cls(
            serial=serial,
            incidents=tuple(incidents),
            jobs=jobs,
            evacuated=evacuated,
            last_round=last_round,
            harep=harep,
            guard=_guard(data.get("guard", {})),
        )


def _guard(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"'guard' must be an object, not {value!r}")
    return dict(value)
