"""Pure incident logic of the maintenance round.

Everything here works on immutable values (``MaintState``, ``Cluster``,
validated mond reports) and returns new values or plans; the round steps in
:mod:`maintd.daemon.steps` do the I/O.  Behaviour follows Ganeti 2.17's maintd:

- a self-diagnose report that is not ``Ok`` becomes an incident unless the
  same (node, report) pair is already known;
- finalized incidents are forgotten once the operator removed their tag
  from the node (or the node left the cluster); canceled ones once the node
  stops reporting them; noted ones that no job acted on once the node
  reports something else (:func:`drop_unreported`), and a node keeps at most
  ``--max-incidents-per-node`` incidents (:func:`cap_per_node`): a report
  that changes every round must not grow the state without bound;
- per node only the most severe active incident acts (oldest first among
  equals);
- an evacuation drains the node, then moves one primary instance per round,
  then replaces one secondary per round, then tags the node and completes;
  a node with an instance that cannot be moved (plain, file, blockdev) is
  drained all the same, then the incident fails naming the instance(s).
  Moves only go to free nodes (no active incident, not touched by another
  job of the same round) so the jobs of one round never conflict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from maintd.cluster.model import LOCAL_TEMPLATES, Cluster, Instance, Node
from maintd.daemon.state import TAG_FAILED, TAG_READY, Action, Incident, MaintState, RepairStatus
from maintd.decide.reason import INCIDENT, format_reason, report_digest


def job_reason(incident: Incident) -> str:
    """Reason text of every job maintd submits for an incident (:mod:`maintd.decide.reason`)."""
    return format_reason(INCIDENT, incident.uuid, incident.report_digest)


def is_active(incident: Incident) -> bool:
    return not incident.status.finalized


# --------------------------------------------------------------------------
# collect


@attrs.frozen
class CollectResult:
    state: MaintState
    created: tuple[Incident, ...] = ()
    #: (uuid, why) of canceled incidents forgotten because the node stopped reporting them
    forgotten: tuple[tuple[str, str], ...] = ()


def _on_node(incident: Incident, node: Node) -> bool:
    return incident.node_name == node.name or (bool(incident.node) and incident.node == node.uuid)


def collect_reports(
    state: MaintState,
    cluster: Cluster,
    reports: Mapping[str, Any],
    now: float,
    new_uuid: Callable[[], str],
) -> CollectResult:
    """New incidents from this round's self-diagnose reports.

    ``reports`` maps node name to a report with ``status`` (an
    :class:`Action`) and ``raw`` (the report's data object); anything else
    (a ``MondError``, ``None``) means the node did not answer and changes
    nothing.  Same (node, report) as a known incident -> nothing new.
    """
    incidents = list(state.incidents)
    created: list[Incident] = []
    forgotten: list[tuple[str, str]] = []
    for name in sorted(reports):
        report = reports[name]
        node = cluster.nodes.get(name)
        if node is None or not hasattr(report, "status") or not hasattr(report, "raw"):
            continue
        raw = dict(report.raw)
        # A canceled incident is forgotten once the node reports something else.
        for inc in list(incidents):
            if (
                inc.status == RepairStatus.CANCELED
                and _on_node(inc, node)
                and dict(inc.original) != raw
            ):
                incidents.remove(inc)
                forgotten.append((inc.uuid, f"{name} no longer reports it"))
        if report.status == Action.OK:
            continue
        if any(_on_node(i, node) and dict(i.original) == raw for i in incidents):
            continue
        uuid = new_uuid()
        incident = Incident(
            uuid=uuid,
            node=node.uuid,
            node_name=node.name,
            original=raw,
            action=report.status,
            status=RepairStatus.NOTED,
            tag=TAG_READY + uuid,
            ctime=now,
            mtime=now,
            digest=report_digest(node.uuid or node.name, raw),
        )
        incidents.append(incident)
        created.append(incident)
    new_state = attrs.evolve(state, incidents=tuple(incidents))
    return CollectResult(new_state, tuple(created), tuple(forgotten))


# --------------------------------------------------------------------------
# flapping reports: what collect_reports would otherwise accumulate


def _reported(report: Any) -> bool:
    return hasattr(report, "status") and hasattr(report, "raw")


def drop_unreported(
    state: MaintState, cluster: Cluster, reports: Mapping[str, Any]
) -> tuple[MaintState, list[tuple[Incident, str]]]:
    """Forget noted incidents no job acted on whose node now reports something else.

    A diagnose script whose output changes every round (a timestamp in
    ``details``) would otherwise leave one noted incident per round behind.
    Only nodes that answered count (an unreachable node changes nothing);
    an incident with a job, or past ``noted``, stays.  Returns the new
    state and (incident, why) pairs.
    """
    dropped: list[tuple[Incident, str]] = []
    keep: list[Incident] = []
    for inc in state.incidents:
        report: Any = reports.get(inc.node_name)
        node = cluster.nodes.get(inc.node_name)
        if (
            inc.status == RepairStatus.NOTED
            and not inc.jobs
            and node is not None
            and _reported(report)
            and dict(inc.original) != dict(report.raw)
        ):
            dropped.append((inc, f"{node.name} no longer reports it"))
            continue
        keep.append(inc)
    if not dropped:
        return state, []
    return attrs.evolve(state, incidents=tuple(keep)), dropped


def cap_per_node(
    state: MaintState, created: Iterable[Incident], limit: int
) -> tuple[MaintState, list[Incident], list[Incident]]:
    """Keep at most ``limit`` incidents per node: new ones beyond it are refused.

    ``created`` are this round's new incidents (already in ``state``); the
    older ones of a node always stay.  Returns the new state, the created
    incidents kept and the ones refused (to be reported, not stored).
    """
    count: dict[str, int] = {}
    new = {inc.uuid for inc in created}
    for inc in state.incidents:
        if inc.uuid not in new:
            count[inc.node_name] = count.get(inc.node_name, 0) + 1
    kept: list[Incident] = []
    refused: list[Incident] = []
    for inc in created:
        n = count.get(inc.node_name, 0)
        if n >= limit:
            refused.append(inc)
        else:
            count[inc.node_name] = n + 1
            kept.append(inc)
    if not refused:
        return state, kept, []
    gone = {inc.uuid for inc in refused}
    incidents = tuple(i for i in state.incidents if i.uuid not in gone)
    return attrs.evolve(state, incidents=incidents), kept, refused


# --------------------------------------------------------------------------
# cleanup


def cleanup(state: MaintState, cluster: Cluster) -> tuple[MaintState, list[tuple[str, str]]]:
    """Forget acknowledged incidents; returns the new state and (uuid, why) pairs.

    - any incident whose node left the cluster;
    - a failed or completed incident whose tag is no longer on the node
      (the operator's acknowledgement), once the tag is known to have been
      set (``tag_set``) and none of its jobs is still awaited.  A tag whose
      job failed, was lost or has not run yet was never set: no
      acknowledgement (:func:`tags_due` says which to submit again).

    A finalized incident whose tag is seen on the node is marked ``tag_set``.
    """
    awaited = set(state.jobs)
    keep: list[Incident] = []
    gone: list[tuple[str, str]] = []
    by_uuid = {n.uuid: n for n in cluster.nodes.values()}
    for inc in state.incidents:
        node = cluster.nodes.get(inc.node_name) or by_uuid.get(inc.node)
        if node is None:
            gone.append((inc.uuid, f"node {inc.node_name} left the cluster"))
            continue
        if inc.status in (RepairStatus.FAILED, RepairStatus.COMPLETED):
            if inc.tag in node.tags:
                if not inc.tag_set:
                    inc = attrs.evolve(inc, tag_set=True)
            elif inc.tag_set and not awaited.intersection(inc.jobs):
                gone.append((inc.uuid, f"tag {inc.tag} removed from {node.name}"))
                continue
        keep.append(inc)
    return attrs.evolve(state, incidents=tuple(keep)), gone


def tags_due(state: MaintState, cluster: Cluster) -> list[Incident]:
    """Failed or completed incidents whose tag must be submitted (again).

    Their tag is not on the node, was never known to be set, and no job
    that sets it is awaited (its job failed, was lost, or none was recorded).
    """
    awaited = set(state.jobs)
    due: list[Incident] = []
    for inc in state.incidents:
        node = cluster.nodes.get(inc.node_name)
        if (
            node is not None
            and inc.status in (RepairStatus.FAILED, RepairStatus.COMPLETED)
            and not inc.tag_set
            and inc.tag not in node.tags
            and (inc.tag_job is None or inc.tag_job not in awaited)
        ):
            due.append(inc)
    return due


def tag_job_ended(state: MaintState, job_id: int, ok: bool) -> tuple[MaintState, list[Incident]]:
    """The tag job ``job_id`` of finalized incidents ended; their updated copies.

    Success marks the tag set; a failure clears ``tag_job`` so the tag is
    submitted again (:func:`tags_due`).
    """
    changed: list[Incident] = []
    for inc in state.incidents:
        if inc.status.finalized and inc.tag_job == job_id:
            updated = attrs.evolve(inc, tag_set=True) if ok else attrs.evolve(inc, tag_job=None)
            state = state.with_incident(updated)
            changed.append(updated)
    return state, changed


def tag_submitted(state: MaintState, incident: Incident, job_id: int, now: float) -> MaintState:
    """Record ``job_id`` as the job that (again) sets the incident's tag."""
    state = with_job(state, incident, job_id, now)
    current = state.incident(incident.uuid) or incident
    return state.with_incident(attrs.evolve(current, tag_job=job_id, tag_set=False))


# --------------------------------------------------------------------------
# operator actions (admin socket)


class IncidentError(Exception):
    """An operator request that cannot be applied; the message names the incident."""


#: An ambiguous prefix names at most this many of the incidents it matches.
AMBIGUOUS_SHOWN = 10


def resolve_incident(state: MaintState, key: str) -> Incident:
    """The incident whose uuid is ``key``, or else the only one whose uuid
    starts with ``key`` (the operator's abbreviation).  IncidentError when
    none matches, or several do (naming them)."""
    exact = state.incident(key)
    if exact is not None:
        return exact
    if not key:
        raise IncidentError("no incident uuid given")
    matches = sorted(i.uuid for i in state.incidents if i.uuid.startswith(key))
    if not matches:
        raise IncidentError(f"no incident {key}")
    if len(matches) > 1:
        shown = ", ".join(matches[:AMBIGUOUS_SHOWN])
        more = len(matches) - AMBIGUOUS_SHOWN
        raise IncidentError(
            f"{key} is ambiguous: it starts the uuids of {len(matches)} incidents ({shown}"
            + (f" and {more} more" if more > 0 else "")
            + "); give more of the uuid"
        )
    found = state.incident(matches[0])
    assert found is not None
    return found


def cancel_incident(state: MaintState, uuid: str, now: float) -> MaintState:
    inc = state.incident(uuid)
    if inc is None:
        raise IncidentError(f"no incident {uuid}")
    if inc.status.finalized:
        raise IncidentError(f"incident {uuid} is already {inc.status.wire}")
    return state.with_incident(
        inc.changed(now, status=RepairStatus.CANCELED, reason="canceled by the operator")
    )


def forget_incident(state: MaintState, uuid: str) -> MaintState:
    if state.incident(uuid) is None:
        raise IncidentError(f"no incident {uuid}")
    return state.without_incident(uuid)


# --------------------------------------------------------------------------
# handle: choice of incidents


def _severity_key(inc: Incident) -> tuple[int, float, str]:
    # most severe first, then oldest, then uuid for determinism
    return (-int(inc.action), inc.ctime, inc.uuid)


def most_severe(incidents: Iterable[Incident]) -> dict[str, Incident]:
    """Per node name, the active incident that acts this round."""
    chosen: dict[str, Incident] = {}
    for inc in sorted((i for i in incidents if is_active(i)), key=_severity_key):
        chosen.setdefault(inc.node_name, inc)
    return chosen


def incident_nodes(state: MaintState) -> set[str]:
    return {i.node_name for i in state.incidents if is_active(i)}


def free_nodes(cluster: Cluster, state: MaintState) -> set[str]:
    """Node names without an active incident."""
    return set(cluster.nodes) - incident_nodes(state)


# --------------------------------------------------------------------------
# handle: plans


@attrs.frozen
class Drain:
    node: str
    touched: frozenset[str] = frozenset()


@attrs.frozen
class MovePrimary:
    instance: str
    #: None: DRBD, moves to its secondary
    target: str | None
    failover: bool
    touched: frozenset[str] = frozenset()
    #: failover off an offline node: do not check the disks there
    ignore_consistency: bool = False


@attrs.frozen
class ReplaceSecondary:
    instance: str
    new_secondary: str
    touched: frozenset[str] = frozenset()


@attrs.frozen
class Repair:
    command: str
    touched: frozenset[str] = frozenset()


@attrs.frozen
class Finish:
    touched: frozenset[str] = frozenset()


@attrs.frozen
class Fail:
    reason: str
    touched: frozenset[str] = frozenset()


@attrs.frozen
class Wait:
    reason: str
    touched: frozenset[str] = frozenset()


Plan = Drain | MovePrimary | ReplaceSecondary | Repair | Finish | Fail | Wait


def describe(plan: Plan) -> str:
    match plan:
        case Drain(node=n):
            return f"drain {n}"
        case MovePrimary(instance=i, target=t, failover=f):
            verb = "failover" if f else "migrate"
            return f"{verb} {i} to {t or 'its secondary'}"
        case ReplaceSecondary(instance=i, new_secondary=s):
            return f"replace secondary of {i} with {s}"
        case Repair(command=c):
            return f"run repair command {c}"
        case Finish():
            return "finish: tag node, completed"
        case Fail(reason=r):
            return f"fail: {r}"
        case Wait(reason=r):
            return f"wait: {r}"
    raise AssertionError(plan)


def _unmovable(inst: Instance) -> str | None:
    if inst.disk_template in LOCAL_TEMPLATES:
        return (
            f"instance {inst.name} has disk template {inst.disk_template} and cannot be "
            "moved off the node"
        )
    if not (inst.is_drbd or inst.is_shared):
        return f"instance {inst.name} has unsupported disk template {inst.disk_template!r}"
    return None


def _needs_memory(inst: Instance) -> int:
    return inst.memory if inst.running else 0


@attrs.frozen
class _Choice:
    target: str | None = None
    fail: str | None = None
    wait: str | None = None


def _choose(
    candidates: list[Node],
    available: set[str],
    what: str,
    key: Callable[[Node], Any],
) -> _Choice:
    if not candidates:
        return _Choice(fail=f"no node has room for {what}")
    usable = [n for n in candidates if n.name in available]
    if not usable:
        names = ", ".join(sorted(n.name for n in candidates))
        return _Choice(wait=f"nodes with room for {what} are busy this round ({names})")
    best = max(usable, key=lambda n: (key(n), _rev(n.name)))
    return _Choice(target=best.name)


def _rev(name: str) -> tuple[int, ...]:
    # tie-break: smallest name wins under max()
    return tuple(-ord(c) for c in name)


def _primary_target(cluster: Cluster, node: Node, inst: Instance, available: set[str]) -> _Choice:
    mem = _needs_memory(inst)
    candidates = [
        n
        for n in cluster.nodes.values()
        if n.group == node.group and n.name != node.name and n.usable and n.mfree >= mem
    ]
    what = f"instance {inst.name} ({mem} MiB memory) in group {node.group}"
    return _choose(candidates, available, what, key=lambda n: n.mfree)


def _secondary_target(
    cluster: Cluster, inst: Instance, excluded: set[str], available: set[str]
) -> _Choice:
    primary = cluster.nodes.get(inst.primary)
    group = primary.group if primary else None
    candidates = [
        n
        for n in cluster.nodes.values()
        if n.group == group
        and n.name not in excluded
        and n.name != inst.primary
        and n.usable
        and n.dfree >= inst.disk
        and n.mfree >= inst.memory
    ]
    what = (
        f"the secondary of {inst.name} ({inst.disk} MiB disk, {inst.memory} MiB memory)"
        f" in group {group}"
    )
    return _choose(candidates, available, what, key=lambda n: (n.dfree, n.mfree))


def plan_evacuation(
    cluster: Cluster,
    node_name: str,
    *,
    failover: bool,
    available: set[str],
    busy: set[str],
    incident_nodes: set[str],
) -> Plan:
    """The next step of evacuating ``node_name``.

    ``available``: nodes that may receive instances this round (free and not
    yet touched by a job of this round).  ``busy``: nodes already touched by
    a job of this round (never touched twice).  ``incident_nodes``: nodes with
    an active incident (never a target; may be touched as an old secondary or
    primary when not busy, which breaks the deadlock of two evacuating nodes
    sharing an instance).
    """
    node = cluster.nodes[node_name]
    mine = frozenset({node.name})
    primaries = sorted(
        (i for i in cluster.instances.values() if i.primary == node.name), key=lambda i: i.name
    )
    secondaries = sorted(
        (
            i
            for i in cluster.instances.values()
            if node.name in i.secondaries and i.primary != node.name
        ),
        key=lambda i: i.name,
    )
    unmovable = [r for r in map(_unmovable, primaries) if r]
    if node.master:
        # the master cannot be drained: fail at once
        if unmovable:
            return Fail("; ".join(unmovable))
        return Fail(f"node {node.name} is the master node; move the master role first")
    # Drain first, even when an instance cannot be moved: the failing node
    # must receive no new instances while the operator sees to it.
    if not (node.drained or node.offline):
        return Drain(node.name, touched=mine)
    if unmovable:
        return Fail("; ".join(unmovable))

    waits: list[str] = []
    available = set(available) - busy - incident_nodes - {node.name}
    for inst in primaries:
        # an offline node can only be failed over from, disks unchecked
        verb_failover = failover or not inst.running or node.offline
        force = node.offline
        if inst.is_drbd:
            sec_name = inst.secondary
            sec = cluster.nodes.get(sec_name) if sec_name else None
            if sec is None:
                return Fail(f"DRBD instance {inst.name} has no secondary node in the cluster")
            sec_ok = sec.usable and sec.mfree >= _needs_memory(inst)
            if sec_ok and sec.name in available:
                return MovePrimary(
                    inst.name, None, verb_failover, touched=frozenset({node.name, sec.name}),
                    ignore_consistency=force,
                )
            if sec_ok and sec.name not in incident_nodes:
                waits.append(f"secondary {sec.name} of {inst.name} is busy this round")
                continue
            # Secondary offline, drained, full or itself being repaired:
            # give the instance a new secondary first, then move it there.
            if sec.name in busy:
                waits.append(f"old secondary {sec.name} of {inst.name} is busy this round")
                continue
            choice = _secondary_target(cluster, inst, {node.name, sec.name}, available)
            if choice.fail:
                return Fail(choice.fail)
            if choice.wait:
                waits.append(choice.wait)
                continue
            assert choice.target is not None
            return ReplaceSecondary(
                inst.name,
                choice.target,
                touched=frozenset({node.name, sec.name, choice.target}),
            )
        choice = _primary_target(cluster, node, inst, available)
        if choice.fail:
            return Fail(choice.fail)
        if choice.wait:
            waits.append(choice.wait)
            continue
        assert choice.target is not None
        return MovePrimary(
            inst.name,
            choice.target,
            verb_failover,
            touched=frozenset({node.name, choice.target}),
            ignore_consistency=force,
        )
    if primaries:
        return Wait("; ".join(waits))

    for inst in secondaries:
        if not inst.is_drbd:
            return Fail(f"instance {inst.name} has disk template {inst.disk_template} with "
                        f"a secondary on {node.name}")
        if inst.primary in busy:
            waits.append(f"primary {inst.primary} of {inst.name} is busy this round")
            continue
        choice = _secondary_target(cluster, inst, {node.name}, available)
        if choice.fail:
            return Fail(choice.fail)
        if choice.wait:
            waits.append(choice.wait)
            continue
        assert choice.target is not None
        return ReplaceSecondary(
            inst.name,
            choice.target,
            touched=frozenset({node.name, inst.primary, choice.target}),
        )
    if secondaries:
        return Wait("; ".join(waits))
    return Finish(touched=mine)


def plan_live_repair(incident: Incident) -> Plan:
    node = frozenset({incident.node_name})
    command = incident.original.get("command")
    if not isinstance(command, str) or not command:
        return Fail("the report names no repair command", touched=node)
    return Repair(command, touched=node)


@attrs.frozen
class Decision:
    incident: Incident
    plan: Plan


def decide(
    cluster: Cluster,
    state: MaintState,
    free: set[str],
    running_jobs: Iterable[int] = (),
    *,
    gate: Callable[[Incident], Plan | None] | None = None,
    plan_evac: Callable[..., Plan] | None = None,
) -> tuple[list[Decision], set[str]]:
    """Plans for this round, most severe incident first.

    ``free``: nodes that may receive instances (no active incident).
    ``running_jobs``: job ids still unfinished; an incident owning one waits.
    ``gate(incident)``: a plan that holds the incident back this round (the
    guardrails), or None.  ``plan_evac``: replaces :func:`plan_evacuation`
    (same arguments; the guardrails' whole-evacuation planner).
    Returns the decisions and the nodes touched by them (to be taken out of
    the free set for later steps).
    """
    running = set(running_jobs)
    chosen = most_severe(state.incidents)
    inc_nodes = set(chosen)
    busy: set[str] = set()
    out: list[Decision] = []
    for inc in sorted(chosen.values(), key=_severity_key):
        plan: Plan
        if inc.node_name not in cluster.nodes:
            continue  # cleanup forgets it
        if running.intersection(inc.jobs):
            plan = Wait("jobs of this incident are still running")
            busy.add(inc.node_name)
        elif inc.node_name in busy:
            plan = Wait(f"node {inc.node_name} is touched by another job this round")
        elif gate is not None and (held := gate(inc)) is not None:
            plan = held
        elif inc.action == Action.LIVE_REPAIR:
            plan = plan_live_repair(inc)
        elif inc.action in (Action.EVACUATE, Action.EVACUATE_FAILOVER):
            plan = (plan_evac or plan_evacuation)(
                cluster,
                inc.node_name,
                failover=inc.action == Action.EVACUATE_FAILOVER,
                available=free,
                busy=busy,
                incident_nodes=inc_nodes,
            )
        else:
            continue
        busy |= plan.touched
        out.append(Decision(inc, plan))
    return out, busy


# --------------------------------------------------------------------------
# incident updates


def with_job(state: MaintState, incident: Incident, job_id: int, now: float) -> MaintState:
    """Record a submitted job: on the incident (now pending) and in the awaited list."""
    current = state.incident(incident.uuid) or incident
    status = current.status if current.status.finalized else RepairStatus.PENDING
    updated = current.changed(now, jobs=(*current.jobs, job_id), status=status)
    new = state.with_incident(updated)
    return attrs.evolve(new, jobs=(*new.jobs, job_id))


def finished(
    state: MaintState, incident: Incident, job_id: int | None, now: float
) -> MaintState:
    """The incident is completed (its ready tag submitted in ``job_id``)."""
    current = state.incident(incident.uuid) or incident
    if job_id is not None:
        state = with_job(state, current, job_id, now)
        current = state.incident(incident.uuid) or current
    return state.with_incident(
        current.changed(now, status=RepairStatus.COMPLETED, tag_job=job_id, tag_set=False)
    )


def failed(
    state: MaintState, incident: Incident, reason: str, job_id: int | None, now: float
) -> MaintState:
    """The incident failed (its failure tag submitted in ``job_id``)."""
    current = state.incident(incident.uuid) or incident
    if job_id is not None:
        state = with_job(state, current, job_id, now)
        current = state.incident(incident.uuid) or current
    return state.with_incident(
        current.changed(
            now,
            status=RepairStatus.FAILED,
            tag=TAG_FAILED + incident.uuid,
            reason=reason,
            tag_job=job_id,
            tag_set=False,
        )
    )
