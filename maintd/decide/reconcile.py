"""Reconciliation: Ganeti's job queue and node tags are the truth about what maintd did.

The state directory lives on the master only.  After a master failover, a
crash between submitting a job and committing its id, or a state directory
restored from an old copy, the daemon's state lacks jobs that Ganeti has.
Every job maintd submits carries a :mod:`maintd.decide.reason` text (incident
uuid + report digest, or the harep/balance marker), so the queue
(``GET /2/jobs?bulk=1``) tells which jobs are ours:

- :func:`reconcile_jobs`: an unfinished job of ours the state does not know
  is adopted (awaited: ``state.jobs``; and listed in its incident's
  ``jobs``), never submitted again; a finished one the state lacks is
  recorded, a failed one is awaited once more so the jobs step fails its
  incident, and a tag job that finalized an incident is applied
  (completed/failed, ``tag-job``).  Jobs of incidents the state does not
  know are returned for :func:`rebuild`.
- :func:`rebuild`: such an incident comes back with its uuid, its jobs and
  the right repair-status.  Its node is the one its drain/tag opcodes name,
  or the node whose current report has the digest its jobs carry; that
  report (same digest) becomes its ``original`` again, so the failure the
  node still reports keeps its uuid.  Not rebuilt: an incident whose tag job
  succeeded but whose tag is gone (the operator acknowledged it) and one
  with only finished jobs, no tag, whose node no longer reports that
  failure (nothing left to continue).
- :func:`rebuild_from_tags`: a ``maintd:repairready:<uuid>`` /
  ``maintd:repairfailed:<uuid>`` node tag of an unknown incident whose jobs
  Ganeti no longer lists (archived) comes back finalized.  A tag whose uuid
  is malformed is reported, never acted on.

What Ganeti shows, and the limits: the queue lists unfinished jobs always
(Ganeti archives only finished ones), and finished jobs until they are
archived (``ganeti-watcher`` archives finished jobs older than six hours;
``gnt-job archive`` at once).  So a running job is never missed and never
submitted twice; an incident whose jobs are all archived is rebuilt from its
tag when it was finalized, and otherwise (mid-evacuation, nothing running)
is started again from the node's report under a new uuid -- the evacuation
continues from the cluster's actual state (node drained, instances moved),
so no operation is repeated.  The reason text of a job is Ganeti's record;
the failure text of a failed job (``opresult``) is not in the bulk listing.

Pure: plain values in (the state, the parsed queue, the cluster snapshot,
reports), the new state and notes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from maintd.cluster.model import Cluster, Node
from maintd.daemon.state import TAG_FAILED, TAG_READY, Action, Incident, MaintState, RepairStatus
from maintd.decide.reason import (
    BALANCE,
    HAREP,
    INCIDENT,
    Reason,
    is_uuid,
    job_reason,
    report_digest,
)

PENDING = frozenset({"queued", "waiting", "running", "canceling"})
FAILED = frozenset({"error", "canceled"})

#: Opcodes that can put an instance on another primary node.
PRIMARY_MOVES = frozenset(
    {"OP_INSTANCE_MIGRATE", "OP_INSTANCE_FAILOVER", "OP_INSTANCE_RECREATE_DISKS"}
)


@attrs.frozen
class Op:
    """What reconciliation needs of one opcode."""

    op_id: str
    node: str | None = None  # OP_NODE_SET_PARAMS
    instance: str | None = None
    tag_kind: str | None = None
    tag_name: str | None = None
    tags: tuple[str, ...] = ()
    drained: bool | None = None


@attrs.frozen
class QueueJob:
    """One job of ours in Ganeti's queue."""

    id: int
    status: str
    reason: Reason
    ops: tuple[Op, ...] = ()
    received: float | None = None

    @property
    def pending(self) -> bool:
        return self.status in PENDING

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    def tag_of(self, uuid: str) -> str | None:
        """The incident tag this job sets on a node (ready or failed), else None."""
        for op in self.ops:
            if op.op_id == "OP_TAGS_SET" and op.tag_kind == "node":
                for tag in (TAG_READY + uuid, TAG_FAILED + uuid):
                    if tag in op.tags:
                        return tag
        return None

    @property
    def moved_instances(self) -> list[str]:
        """Instances its opcodes put on another primary (migrate, failover, recreate-disks)."""
        return [op.instance for op in self.ops
                if op.op_id in PRIMARY_MOVES and op.instance is not None]

    @property
    def nodes(self) -> list[str]:
        """Nodes its drain or node-tag opcodes name (the incident's node)."""
        out = []
        for op in self.ops:
            if op.op_id == "OP_NODE_SET_PARAMS" and op.node:
                out.append(op.node)
            elif op.op_id == "OP_TAGS_SET" and op.tag_kind == "node" and op.tag_name:
                out.append(op.tag_name)
        return out


def _op(doc: Mapping[str, Any]) -> Op:
    def text(key: str) -> str | None:
        value = doc.get(key)
        return value if isinstance(value, str) else None

    tags = doc.get("tags")
    drained = doc.get("drained")
    return Op(
        op_id=text("OP_ID") or "",
        node=text("node_name"),
        instance=text("instance_name"),
        tag_kind=text("kind"),
        tag_name=text("name"),
        tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        drained=drained if isinstance(drained, bool) else None,
    )


def parse_queue(docs: Any) -> tuple[list[QueueJob], list[str]]:
    """Our jobs in a ``GET /2/jobs?bulk=1`` answer, and problems (one line each).

    A job whose reason does not parse is not ours and is skipped silently;
    an entry that is not a job object is a problem.
    """
    if not isinstance(docs, list):
        return [], [f"job list is not a JSON list ({type(docs).__name__})"]
    jobs: list[QueueJob] = []
    problems: list[str] = []
    for n, doc in enumerate(docs, 1):
        if not isinstance(doc, Mapping):
            problems.append(f"job entry {n} is not an object")
            continue
        jid = doc.get("id")
        if isinstance(jid, str) and jid.isdigit():
            jid = int(jid)
        if not isinstance(jid, int) or isinstance(jid, bool):
            problems.append(f"job entry {n} has no numeric id ({jid!r})")
            continue
        ops = doc.get("ops")
        reason = job_reason(ops)
        if reason is None:
            continue
        status = doc.get("status")
        if not isinstance(status, str):
            continue  # a job Ganeti no longer knows
        received = doc.get("received_ts")
        when = None
        if isinstance(received, list) and received and isinstance(received[0], int | float):
            when = float(received[0])
        jobs.append(QueueJob(
            id=jid, status=status, reason=reason,
            ops=tuple(_op(o) for o in (ops or ()) if isinstance(o, Mapping)), received=when,
        ))
    return sorted(jobs, key=lambda j: j.id), problems


@attrs.frozen
class Result:
    state: MaintState
    #: What changed, one dict per change (logged and noted in /1/last-round).
    notes: tuple[dict[str, Any], ...] = ()
    #: Jobs of incidents the state does not know, by incident uuid.
    unknown: Mapping[str, tuple[QueueJob, ...]] = attrs.field(factory=dict)
    #: Every job of ours the state did not know (adopted, applied or unknown).
    new: tuple[QueueJob, ...] = ()


def _known_jobs(state: MaintState) -> set[int]:
    known = set(state.jobs)
    for inc in state.incidents:
        known.update(inc.jobs)
    for rec in state.harep.values():
        if not isinstance(rec, Mapping):
            continue
        for key in ("jobs", "tag_jobs"):
            value = rec.get(key)
            if isinstance(value, list | tuple):
                known.update(j for j in value if isinstance(j, int))
    return known


def _apply(inc: Incident, jobs: Iterable[QueueJob], now: float) -> tuple[Incident, list[int]]:
    """``inc`` with ``jobs`` (Ganeti's, not in ``inc.jobs``) applied; ids to await."""
    jobs = sorted(jobs, key=lambda j: j.id)
    if not jobs:
        return inc, []
    awaited = [j.id for j in jobs if j.pending]
    tag_jobs = [(j, t) for j in jobs if (t := j.tag_of(inc.uuid))]
    others = [j for j in jobs if not j.tag_of(inc.uuid)]
    changes: dict[str, Any] = {"jobs": tuple(sorted({*inc.jobs, *(j.id for j in jobs)}))}
    status = inc.status
    if others and status == RepairStatus.NOTED:
        status = RepairStatus.PENDING
    if tag_jobs:
        last, tag = tag_jobs[-1]
        if tag.startswith(TAG_FAILED):
            status = RepairStatus.FAILED
            if not inc.reason:
                changes["reason"] = "failed (its failure tag job found in Ganeti's job queue)"
        else:
            status = RepairStatus.COMPLETED
        changes["tag"] = tag
        changes["tag_job"] = None if last.failed else last.id
        changes["tag_set"] = last.status == "success"
    elif not status.finalized:
        # a failed job of an active incident: the jobs step fails it (one tag job)
        awaited += [j.id for j in others if j.failed]
    changes["status"] = status
    return inc.changed(now, **changes), sorted(set(awaited))


def reconcile_jobs(state: MaintState, queue: Iterable[QueueJob], now: float) -> Result:
    """Apply the jobs of ours that the state lacks (see the module text)."""
    queue = list(queue)
    known = _known_jobs(state)
    new = [j for j in queue if j.id not in known]
    notes: list[dict[str, Any]] = []
    awaited = list(state.jobs)
    by_incident: dict[str, list[QueueJob]] = {}
    for job in new:
        if job.reason.kind == INCIDENT:
            by_incident.setdefault(job.reason.id, []).append(job)
        elif job.pending and job.reason.kind in (HAREP, BALANCE):
            awaited.append(job.id)
            notes.append({"reconcile": "adopted", "job": job.id, "kind": job.reason.kind,
                          "id": job.reason.id, "status": job.status})
    unknown: dict[str, tuple[QueueJob, ...]] = {}
    for uuid, jobs in by_incident.items():
        inc = state.incident(uuid)
        if inc is None:
            unknown[uuid] = tuple(jobs)
            # never submit again what is running: await it even before the
            # incident is rebuilt (or when it cannot be)
            awaited += [j.id for j in jobs if j.pending]
            continue
        updated, wait = _apply(inc, jobs, now)
        state = state.with_incident(updated)
        awaited += wait
        notes.append(_note("applied", updated, jobs, inc.status))
    # Whatever the state says, every unfinished job of ours is awaited.
    awaited += [j.id for j in queue if j.pending]
    awaited = list(dict.fromkeys(awaited))
    if awaited != list(state.jobs):
        state = attrs.evolve(state, jobs=tuple(awaited))
    return Result(state, tuple(notes), unknown, tuple(new))


def _note(what: str, inc: Incident, jobs: Iterable[QueueJob],
          before: RepairStatus | None) -> dict[str, Any]:
    note: dict[str, Any] = {
        "reconcile": what, "incident": inc.uuid, "node": inc.node_name,
        "jobs": [j.id for j in jobs], "repair-status": inc.status.wire,
    }
    if before is not None and before != inc.status:
        note["was"] = before.wire
    return note


def _report_for(node: Node, reports: Mapping[str, Mapping[str, Any]], digest: str) -> Any:
    raw = reports.get(node.name)
    if raw is not None and digest and report_digest(node.uuid or node.name, raw) == digest:
        return raw
    return None


def _action_of(raw: Mapping[str, Any] | None, jobs: Iterable[QueueJob]) -> Action:
    if raw is not None:
        try:
            return Action.from_wire(str(raw.get("status")))
        except ValueError:
            pass
    ops = [op.op_id for j in jobs for op in j.ops]
    return Action.EVACUATE_FAILOVER if "OP_INSTANCE_FAILOVER" in ops else Action.EVACUATE


def rebuild(
    state: MaintState,
    unknown: Mapping[str, Iterable[QueueJob]],
    cluster: Cluster,
    reports: Mapping[str, Mapping[str, Any]],
    now: float,
) -> Result:
    """Incidents the state lacks, from their jobs (see the module text).

    ``reports``: node name -> the raw self-diagnose report object the node
    reports now (nodes that did not answer are absent).
    """
    notes: list[dict[str, Any]] = []
    awaited = list(state.jobs)
    for uuid in sorted(unknown):
        jobs = sorted(unknown[uuid], key=lambda j: j.id)
        if not jobs or state.incident(uuid) is not None:
            continue
        digest = next((j.reason.digest for j in jobs if j.reason.digest), "")
        named = [n for j in jobs for n in j.nodes]
        node = next((cluster.nodes[n] for n in named if n in cluster.nodes), None)
        if node is None and digest:
            node = next((n for n in cluster.nodes.values() if _report_for(n, reports, digest)),
                        None)
        ids = [j.id for j in jobs]
        if node is None:
            notes.append({"reconcile": "not rebuilt", "incident": uuid, "jobs": ids,
                          "why": "no node of the cluster is named by its jobs or reports "
                                 "its failure"})
            continue
        raw = _report_for(node, reports, digest)
        tags = [(j, j.tag_of(uuid)) for j in jobs if j.tag_of(uuid)]
        if tags:
            last, tag = tags[-1]
            if last.status == "success" and tag not in node.tags:
                notes.append({"reconcile": "not rebuilt", "incident": uuid, "jobs": ids,
                              "node": node.name,
                              "why": f"tag {tag} was set and has been removed (acknowledged)"})
                continue
        elif not any(j.pending for j in jobs) and raw is None:
            notes.append({"reconcile": "not rebuilt", "incident": uuid, "jobs": ids,
                          "node": node.name,
                          "why": "nothing runs and the node no longer reports its failure"})
            continue
        received = [j.received for j in jobs if j.received is not None]
        base = Incident(
            uuid=uuid,
            node=node.uuid,
            node_name=node.name,
            original=dict(raw) if raw is not None else {},
            action=_action_of(raw, jobs),
            status=RepairStatus.NOTED,
            tag=TAG_READY + uuid,
            ctime=min(received) if received else now,
            mtime=now,
            serial_no=0,
            digest=digest,
        )
        inc, wait = _apply(base, jobs, now)
        state = state.with_incident(inc)
        awaited += wait
        note = _note("rebuilt", inc, jobs, None)
        if raw is None:
            note["report"] = "not reported now"
        notes.append(note)
    awaited = list(dict.fromkeys(awaited))
    if awaited != list(state.jobs):
        state = attrs.evolve(state, jobs=tuple(awaited))
    return Result(state, tuple(notes))


def parse_incident_tag(tag: str) -> tuple[RepairStatus, str] | None:
    """(completed|failed, uuid) of a ``maintd:repair*:`` tag; None for other tags.

    Raises ``ValueError`` for one of ours whose uuid is malformed.
    """
    for prefix, status in ((TAG_READY, RepairStatus.COMPLETED), (TAG_FAILED, RepairStatus.FAILED)):
        if tag.startswith(prefix):
            uuid = tag[len(prefix):]
            if not is_uuid(uuid):
                raise ValueError(f"tag {tag!r}: {uuid!r} is not an incident uuid")
            return status, uuid
    return None


def rebuild_from_tags(
    state: MaintState,
    cluster: Cluster,
    reports: Mapping[str, Mapping[str, Any]],
    now: float,
) -> Result:
    """Finalized incidents of the ``maintd:repair*:<uuid>`` tags the state lacks.

    Only tags whose jobs Ganeti no longer lists get here (the others were
    rebuilt from their jobs).  The node's current failure report, when it
    reports one and carries only this one unknown tag, is taken as the
    incident's ``original`` (the failure stays tied to the acknowledged-to-be
    tag instead of starting a new incident).  Malformed uuids: a note, nothing else.
    """
    notes: list[dict[str, Any]] = []
    for node in sorted(cluster.nodes.values(), key=lambda n: n.name):
        found: list[tuple[str, RepairStatus, str]] = []
        for tag in sorted(node.tags):
            try:
                parsed = parse_incident_tag(tag)
            except ValueError as e:
                notes.append({"reconcile": "malformed tag", "node": node.name, "tag": tag,
                              "why": str(e)})
                continue
            if parsed is None or state.incident(parsed[1]) is not None:
                continue
            found.append((tag, *parsed))
        for tag, status, uuid in found:
            raw = reports.get(node.name) if len(found) == 1 else None
            if raw is not None and raw.get("status") == Action.OK.wire:
                raw = None
            inc = Incident(
                uuid=uuid,
                node=node.uuid,
                node_name=node.name,
                original=dict(raw) if raw is not None else {},
                action=_action_of(raw, ()),
                status=status,
                tag=tag,
                ctime=now,
                mtime=now,
                reason="" if status == RepairStatus.COMPLETED
                else "failed (its failure tag found on the node)",
                tag_job=None,
                tag_set=True,
            )
            state = state.with_incident(inc)
            notes.append({"reconcile": "rebuilt", "incident": uuid, "node": node.name,
                          "repair-status": status.wire, "from": f"tag {tag}"})
    return Result(state, tuple(notes))
