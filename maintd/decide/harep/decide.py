"""harep's per-instance state machine and repair decisions (pure).

An instance's auto-repair state comes from its own ``pending``/``result``
tags (:func:`tag_state`, harep's rules), its policy from the enable/suspend
tags of the instance, its primary node's group and the cluster
(:func:`maintd.decide.harep.tags.resolve_policy`), and what is broken from the
node flags (:func:`detect`).  :func:`plan_new` and :func:`plan_pending` turn
that into a :class:`Decision`: tag changes, RAPI operations, nodes touched.
The round step (:mod:`maintd.daemon.steps.harep`) carries decisions out.

Detection follows harep, with one improvement harep's own man page asks
for: harep's data model cannot tell a drained node from an offline one, so
it fails over (or even reinstalls) where a live migration is enough.  Here:

=============================  ==================  ===============================
instance                       repair type         operations (harep's opcodes)
=============================  ==================  ===============================
DRBD, both nodes offline       reinstall           recreate disks (iallocator),
                                                   then reinstall
DRBD, primary offline          failover            failover (consistency checked)
DRBD, secondary offline or     fix-storage         replace disks, new secondary
drained                                            chosen by the iallocator
DRBD, primary drained          migrate (running)   live migration
                               failover (stopped)  failover
plain, primary offline         reinstall           recreate disks (iallocator),
                                                   then reinstall
=============================  ==================  ===============================

The iallocator is ``--iallocator``, else the cluster's default, else
``hail`` (the one harep names).  RAPI runs one operation per job, so a
reinstall is two jobs submitted together, in harep's order: recreate the
disks where the iallocator puts them (allowed while the instance is marked
up because its old primary is offline), then RAPI's reinstall job
(shutdown, reinstall, startup if it was up: Ganeti reinstalls only
instances marked down; harep's own recreate+reinstall job fails there for
instances marked up).

A DRBD instance whose primary is offline and whose secondary is drained
waits (Ganeti fails over only to undrained nodes), where harep, seeing two
"offline" nodes, would recreate its disks and reinstall it.

A plain instance on a drained (online) primary is left alone: it still runs,
and reinstalling it would destroy its data.  Other disk templates are not
repaired (as in harep).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from maintd.cluster.model import Cluster, Instance, Node
from maintd.decide.harep.tags import (
    Policy,
    PolicyKind,
    RepairResult,
    RepairTag,
    RepairType,
    TagError,
    parse,
    resolve_policy,
)

#: uuid5 namespace of the repair ids maintd writes (lets maintd recognise its
#: own multi-step repairs from the tag alone).
MAINTD_NAMESPACE = uuid.UUID("6f1b7f0e-53a4-5d8e-9a61-1c2d6e0b9a47")

FINAL_OK = "success"
FINAL_STATUSES = frozenset({"success", "error", "canceled", "lost"})


# --- tag state (harep's setInitialState) -----------------------------------


class Status(enum.Enum):
    HEALTHY = "healthy"
    PENDING = "pending"
    FAILED = "failed"
    ERROR = "error"


@attrs.frozen
class TagState:
    """What an instance's ``pending``/``result`` tags say."""

    status: Status
    #: The tag deciding the state (a result for HEALTHY, if any).
    current: RepairTag | None = None
    current_text: str = ""
    #: Every tag of the current repair (the deciding one and stale copies).
    current_group: tuple[str, ...] = ()
    #: Tags superseded by ``current``; removed with the next tag change.
    obsolete: tuple[str, ...] = ()
    #: Why the state is ERROR.
    error: str = ""
    #: Malformed auto-repair tags, one line each (already naming the tag).
    problems: tuple[str, ...] = ()


def _group_key(tag: RepairTag, text: str) -> tuple[int, int, str]:
    rank = -1 if tag.result is None else int(tag.result)
    return (rank, tag.ts, text)


def tag_state(instance: str, tags: Iterable[str]) -> TagState:
    """harep's initial state from an instance's tags.

    Tags are grouped by repair id; groups are taken oldest first (by their
    earliest timestamp).  Within a group the tag with the highest result
    (pending < enoperm < success < failure), then the newest, speaks.  The
    earliest failure always wins; a pending repair followed by any later
    repair is an error for this instance only; otherwise the newest group
    wins and the older groups' tags become obsolete.  Pending tags left in a
    group that already has a result are obsolete too.
    """
    groups: dict[str, list[tuple[RepairTag, str]]] = {}
    problems: list[str] = []
    for text in sorted(tags):
        try:
            parsed = parse(text)
        except TagError as err:
            problems.append(f"instance {instance}: ignoring malformed tag: {err}")
            continue
        if isinstance(parsed, RepairTag):
            groups.setdefault(parsed.id, []).append((parsed, text))
    ordered = sorted(groups.items(), key=lambda kv: (min(t.ts for t, _ in kv[1]), kv[0]))
    status = Status.HEALTHY
    current: tuple[RepairTag, str] | None = None
    group: list[str] = []
    obsolete: list[str] = []
    for _, members in ordered:
        chosen = max(members, key=lambda m: _group_key(*m))
        stale = [
            text for tag, text in members if text != chosen[1] and chosen[0].result is not None
        ]
        if status is Status.FAILED:
            obsolete.extend(stale)
            continue
        if status is Status.PENDING:
            assert current is not None
            return TagState(
                Status.ERROR,
                current[0],
                current[1],
                tuple(group),
                error=(
                    f"instance {instance}: unfinished repair {current[1]!r} "
                    f"followed by {chosen[1]!r}; remove one of them"
                ),
                problems=tuple(problems),
            )
        if current is not None:
            obsolete.extend(group)
        obsolete.extend(stale)
        current = chosen
        group = [chosen[1]] if stale else [text for _, text in members]
        result = chosen[0].result
        if result is None:
            status = Status.PENDING
        elif result is RepairResult.FAILURE:
            status = Status.FAILED
        else:
            status = Status.HEALTHY
    return TagState(
        status,
        current[0] if current else None,
        current[1] if current else "",
        tuple(group),
        obsolete=tuple(obsolete),
        problems=tuple(problems),
    )


# --- detection ----------------------------------------------------------------


class Repair(enum.Enum):
    """A concrete repair; its ``type`` is the permission it needs."""

    REPLACE_SECONDARY = ("replace-secondary", RepairType.FIX_STORAGE)
    MIGRATE = ("migrate", RepairType.MIGRATE)
    FAILOVER = ("failover", RepairType.FAILOVER)
    REINSTALL = ("reinstall", RepairType.REINSTALL)

    def __init__(self, label: str, rtype: RepairType) -> None:
        self.label = label
        self.rtype = rtype


@attrs.frozen
class Detected:
    repair: Repair
    why: str


def _node_state(cluster: Cluster, name: str | None) -> str | None:
    node = cluster.nodes.get(name) if name else None
    if node is None:
        return None
    if node.offline:
        return "offline"
    if node.drained:
        return "drained"
    return "ok"


def detect(cluster: Cluster, inst: Instance) -> Detected | None:
    """What repair ``inst`` needs, judging by its nodes' flags; None if none.

    Instances marked offline are left alone (Ganeti refuses to move them).
    """
    if inst.admin_state == "offline":
        return None
    pstate = _node_state(cluster, inst.primary)
    if pstate is None:
        return None
    if inst.disk_template == "drbd":
        sstate = _node_state(cluster, inst.secondary)
        if sstate is None:
            return None
        if pstate == "offline" and sstate == "offline":
            return Detected(
                Repair.REINSTALL,
                f"primary {inst.primary} and secondary {inst.secondary} are offline",
            )
        if pstate == "offline":
            return Detected(Repair.FAILOVER, f"primary {inst.primary} is offline")
        if sstate in ("offline", "drained"):
            return Detected(Repair.REPLACE_SECONDARY, f"secondary {inst.secondary} is {sstate}")
        if pstate == "drained":
            if inst.running:
                return Detected(Repair.MIGRATE, f"primary {inst.primary} is drained")
            return Detected(
                Repair.FAILOVER, f"primary {inst.primary} is drained (instance stopped)"
            )
        return None
    if inst.disk_template == "plain" and pstate == "offline":
        return Detected(Repair.REINSTALL, f"primary {inst.primary} is offline")
    return None


# --- operations -----------------------------------------------------------------


@attrs.frozen
class Op:
    """One RAPI call: ``RapiClient.<method>(instance, **kwargs, reason=...)``."""

    method: str
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)

    def describe(self, instance: str) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.kwargs.items()))
        return f"{self.method}({instance}{', ' if args else ''}{args})"

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "args": dict(self.kwargs)}


#: Number of jobs each repair takes when maintd runs it over RAPI (all
#: submitted together, in this order): RAPI cannot put harep's recreate-disks
#: and reinstall opcodes into one job.
STEPS = {
    RepairType.FIX_STORAGE: 1,
    RepairType.MIGRATE: 1,
    RepairType.FAILOVER: 1,
    RepairType.REINSTALL: 2,
}

#: The iallocator harep names in its opcodes; maintd uses the cluster's
#: default iallocator and falls back to this one.
DEFAULT_IALLOCATOR = "hail"


def iallocator_for(cluster: Cluster, override: str | None = None) -> str:
    """``--iallocator`` if given, else the cluster's default, else ``hail``."""
    return override or cluster.default_iallocator or DEFAULT_IALLOCATOR


def repair_id(instance: str, rtype: RepairType, ts: int) -> str:
    """The id maintd gives a repair: a uuid5 it can recognise later."""
    return str(uuid.uuid5(MAINTD_NAMESPACE, f"{instance}:{rtype.wire}:{ts}"))


def is_own(instance: str, tag: RepairTag) -> bool:
    """True when ``tag``'s repair was started by maintd (not by harep)."""
    return tag.id == repair_id(instance, tag.type, tag.ts)


def _group_nodes(cluster: Cluster, inst: Instance) -> list[Node]:
    primary = cluster.nodes.get(inst.primary)
    if primary is None:
        return []
    return [n for n in cluster.nodes.values() if n.group == primary.group]


def _needs_memory(inst: Instance) -> int:
    if not inst.running:
        return 0
    return inst.minmem or inst.memory


def iallocator_scope(cluster: Cluster, inst: Instance, repair: Repair) -> frozenset[str]:
    """Every node the iallocator may pick for ``repair`` of ``inst``.

    replace-disks (new secondary) asks the iallocator to relocate the
    secondary inside the instance's node group; recreate-disks asks it to
    allocate the instance anew with no group given, so any node of the
    cluster may come back.  Other repairs name no iallocator.
    """
    if repair is Repair.REPLACE_SECONDARY:
        return frozenset(n.name for n in _group_nodes(cluster, inst))
    if repair is Repair.REINSTALL:
        return frozenset(cluster.nodes)
    return frozenset()


@attrs.frozen
class Plan:
    ops: tuple[Op, ...]
    #: Nodes the jobs touch or may touch (the instance's online nodes and
    #: the iallocator's possible choices); taken out of the round's free set.
    touched: frozenset[str]


@attrs.frozen
class Blocked:
    why: str


def _online(cluster: Cluster, names: Iterable[str | None]) -> set[str]:
    out = set()
    for name in names:
        node = cluster.nodes.get(name) if name else None
        if node is not None and not node.offline:
            out.add(node.name)
    return out


def repair_ops(
    cluster: Cluster, inst: Instance, repair: Repair, iallocator: str, start: bool | None = None
) -> tuple[Op, ...]:
    """harep's opcodes for ``repair``, as RAPI calls, in harep's order.

    ``start``: whether the reinstall starts the instance again (default: it
    is marked up now).  harep's own reinstall opcode would refuse an instance
    marked up; RAPI's reinstall job shuts it down first and starts it after.
    """
    if repair is Repair.REINSTALL:
        return (
            Op("recreate_disks", {"iallocator": iallocator}),
            Op("reinstall_instance", {"start": inst.running if start is None else start}),
        )
    if repair is Repair.REPLACE_SECONDARY:
        return (Op("replace_disks", {"mode": "replace_new_secondary", "iallocator": iallocator}),)
    if repair is Repair.MIGRATE:
        return (Op("migrate_instance", {"mode": "live"}),)
    return (Op("failover_instance", {"ignore_consistency": False}),)


def plan_step(
    cluster: Cluster,
    inst: Instance,
    repair: Repair,
    step: int,
    free: frozenset[str],
    start: bool | None = None,
    iallocator: str | None = None,
) -> Plan | Blocked:
    """The operations of ``repair`` on ``inst`` from number ``step`` on.

    Every online node of the instance must be free, and so must every node
    the iallocator may pick that is usable now (online, not drained, vm
    capable): nodes another step of this round claimed (incident handling
    drains, evacuates to or repairs them) block the repair for this round.
    Unusable nodes are never picked by the iallocator.
    """
    ialloc = iallocator or iallocator_for(cluster)
    current = _online(cluster, [inst.primary, *inst.secondaries])
    scope = iallocator_scope(cluster, inst, repair)
    if step == 0 and repair in (Repair.MIGRATE, Repair.FAILOVER):
        target = cluster.nodes.get(inst.secondary or "")
        if target is None or target.offline:
            return Blocked(f"secondary {inst.secondary} is offline or unknown")
        if not target.usable:
            # Ganeti refuses to fail over or migrate to a drained node.
            return Blocked(
                f"secondary {target.name} is drained or not vm capable; "
                "undrain it to let the repair proceed"
            )
        if target.mfree < _needs_memory(inst):
            return Blocked(
                f"secondary {target.name} has {target.mfree} MiB free, "
                f"instance needs {_needs_memory(inst)}"
            )
    if step == 0 and scope:
        own = {inst.primary, *inst.secondaries}
        if repair is Repair.REPLACE_SECONDARY:
            candidates = [n for n in scope - own if cluster.nodes[n].usable]
        else:
            candidates = [n for n in scope if cluster.nodes[n].usable]
        if not candidates:
            return Blocked(f"no usable node for the iallocator {ialloc} to pick")
    ops = repair_ops(cluster, inst, repair, ialloc, start)[step:]
    if not ops:
        return Blocked(f"repair has no step {step + 1}")
    busy = sorted(current - free)
    if busy:
        return Blocked(f"node(s) {', '.join(busy)} not free this round")
    if step == 0:
        claimed = sorted(n for n in scope - free if cluster.nodes[n].usable)
        if claimed:
            return Blocked(
                f"the iallocator may pick node(s) {', '.join(claimed)}, "
                "claimed by another step this round"
            )
    touched = current | scope if step == 0 else current
    return Plan(ops, frozenset(touched))


# --- decisions --------------------------------------------------------------------


class Verdict(enum.Enum):
    HEALTHY = "healthy"  # nothing to do
    SUSPENDED = "suspended"  # broken, repairs suspended
    NOT_ENABLED = "not-enabled"  # broken, no autorepair tag
    ENOPERM = "enoperm"  # broken beyond the allowed type: result tag written
    ENOPERM_KNOWN = "enoperm-known"  # same enoperm already recorded
    REPAIR = "repair"  # start a repair
    BLOCKED = "blocked"  # repair allowed, cannot start this round
    WAITING = "waiting"  # pending repair: jobs still running
    CONTINUE = "continue"  # pending repair: next step
    FINISHED = "finished"  # pending repair: result tag written
    FAILED = "failed"  # a failure result tag: hands off until removed
    ERROR = "error"  # contradictory tags


@attrs.frozen
class Decision:
    instance: str
    verdict: Verdict
    message: str
    repair: Repair | None = None
    ops: tuple[Op, ...] = ()
    touched: frozenset[str] = frozenset()
    #: Tag written before anything else (pending or result tag).
    add_tag: RepairTag | None = None
    remove_tags: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "instance": self.instance,
            "harep": self.verdict.value,
            "message": self.message,
        }
        if self.repair is not None:
            out["repair"] = self.repair.label
            out["type"] = self.repair.rtype.wire
        if self.ops:
            out["ops"] = [op.describe(self.instance) for op in self.ops]
        if self.add_tag is not None:
            out["add_tag"] = self.add_tag.format()
        if self.remove_tags:
            out["remove_tags"] = list(self.remove_tags)
        return out


def policy_for(cluster: Cluster, inst: Instance, now: float) -> Policy:
    group = cluster.group_of(inst.primary)
    return resolve_policy(inst.tags, group.tags if group else (), cluster.tags, now)


def plan_new(
    cluster: Cluster,
    inst: Instance,
    state: TagState,
    now: float,
    free: frozenset[str],
    iallocator: str | None = None,
) -> Decision:
    """Decision for an instance not in a pending, failed or error state.

    A repair's decision carries all its operations (submitted together) and
    its pending tag without job ids: the step fills them in once Ganeti
    returns them, as harep does.
    """
    name = inst.name
    problems = state.problems
    found = detect(cluster, inst)
    if found is None:
        return Decision(name, Verdict.HEALTHY, "healthy", problems=problems)
    policy = policy_for(cluster, inst, now)
    needs = f"needs {found.repair.label} ({found.repair.rtype.wire}): {found.why}"
    if policy.kind is PolicyKind.SUSPENDED:
        return Decision(
            name,
            Verdict.SUSPENDED,
            f"{needs}; {policy.describe()}",
            found.repair,
            problems=problems,
        )
    if policy.kind is PolicyKind.NOT_ENABLED:
        return Decision(
            name,
            Verdict.NOT_ENABLED,
            f"{needs}; {policy.describe()}",
            found.repair,
            problems=problems,
        )
    ts = int(now)
    remove = (*state.current_group, *state.obsolete)
    if not policy.allows(found.repair.rtype):
        cur = state.current
        if (
            cur is not None
            and cur.result is RepairResult.ENOPERM
            and cur.type is found.repair.rtype
        ):
            return Decision(
                name,
                Verdict.ENOPERM_KNOWN,
                f"{needs}; {policy.describe()} (enoperm already recorded)",
                found.repair,
                problems=problems,
            )
        tag = RepairTag(
            found.repair.rtype,
            repair_id(name, found.repair.rtype, ts),
            ts,
            (),
            RepairResult.ENOPERM,
        )
        return Decision(
            name,
            Verdict.ENOPERM,
            f"{needs}; not repaired: only {policy.describe()}",
            found.repair,
            add_tag=tag,
            remove_tags=remove,
            problems=problems,
        )
    plan = plan_step(cluster, inst, found.repair, 0, free, iallocator=iallocator)
    if isinstance(plan, Blocked):
        return Decision(
            name, Verdict.BLOCKED, f"{needs}; waiting: {plan.why}", found.repair, problems=problems
        )
    tag = RepairTag(found.repair.rtype, repair_id(name, found.repair.rtype, ts), ts, ())
    return Decision(
        name,
        Verdict.REPAIR,
        f"{needs}; {policy.describe()}",
        found.repair,
        ops=plan.ops,
        touched=plan.touched,
        add_tag=tag,
        remove_tags=remove,
        problems=problems,
    )


_REPAIR_OF_TYPE = {r.rtype: r for r in Repair}


def plan_pending(
    cluster: Cluster,
    inst: Instance,
    state: TagState,
    jobs: tuple[int, ...],
    statuses: Mapping[int, str],
    now: float,
    free: frozenset[str],
    start: bool | None = None,
    iallocator: str | None = None,
) -> Decision:
    """Decision for an instance with a pending repair.

    ``jobs`` are the repair's jobs (from the tag, or from maintd's own record
    while the tag update is still queued), ``statuses`` their job statuses
    ("lost" for jobs Ganeti no longer knows).  A pending tag with no jobs is
    finished as a success (harep's reading), unless it is one of maintd's
    own (written before the job by older versions): that repair is started
    now if it is still needed.  One of maintd's own repairs with fewer jobs
    than it takes (its reinstall job could not be submitted with its
    recreate-disks job) gets the rest (CONTINUE).  Runs whatever the policy
    says: jobs submitted before a suspension are allowed to finish; the rest
    of one of maintd's own repairs waits while suspended.  ``start`` is
    passed to the reinstall job (recorded when the repair began).

    Tags of older maintd versions: a three-job reinstall (recreate,
    shutdown, reinstall) finishes once its jobs are done; one with only its
    recreate job gets RAPI's reinstall job (shutdown included); one stopped
    after its shutdown job (two jobs) looks like a finished two-job
    reinstall here: the step tells them apart by the second job's opcodes in
    Ganeti's queue and passes only the first job then.
    """
    name = inst.name
    cur = state.current
    assert cur is not None and cur.result is None
    running = [j for j in jobs if statuses.get(j, "lost") not in FINAL_STATUSES]
    if running:
        return Decision(
            name,
            Verdict.WAITING,
            f"repair {cur.id} ({cur.type.wire}) waiting for job(s) {running}",
            problems=state.problems,
        )
    failed = [j for j in jobs if statuses.get(j, "lost") != FINAL_OK]
    remove = (*state.current_group, *state.obsolete)
    ts = int(now)
    if failed:
        return Decision(
            name,
            Verdict.FINISHED,
            f"repair {cur.id} ({cur.type.wire}) failed: job(s) {failed} did not succeed",
            add_tag=attrs.evolve(cur, jobs=jobs).with_result(RepairResult.FAILURE, ts),
            remove_tags=remove,
            problems=state.problems,
        )
    step = len(jobs)
    own = is_own(name, cur)
    if own and not jobs:
        # maintd's own pending tag whose first job never got submitted (the
        # daemon stopped in between, or the tag job was slow): the design's
        # "pending, no job run yet".  Start it if it is still needed and
        # allowed; otherwise close it.
        found = detect(cluster, inst)
        if found is None or found.repair.rtype is not cur.type:
            return Decision(
                name,
                Verdict.FINISHED,
                f"repair {cur.id} ({cur.type.wire}) no longer needed",
                add_tag=cur.with_result(RepairResult.SUCCESS, ts),
                remove_tags=remove,
                problems=state.problems,
            )
        policy = policy_for(cluster, inst, now)
        if policy.kind is not PolicyKind.SUSPENDED and not policy.allows(cur.type):
            return Decision(
                name,
                Verdict.FINISHED,
                f"repair {cur.id} ({cur.type.wire}) not started: {policy.describe()}",
                found.repair,
                add_tag=cur.with_result(RepairResult.ENOPERM, ts),
                remove_tags=remove,
                problems=state.problems,
            )
    if own and step < STEPS[cur.type]:
        repair = _REPAIR_OF_TYPE[cur.type]
        policy = policy_for(cluster, inst, now)
        if policy.kind is PolicyKind.SUSPENDED:
            return Decision(
                name,
                Verdict.WAITING,
                f"repair {cur.id} step {step + 1} waits: {policy.describe()}",
                repair,
                problems=state.problems,
            )
        plan = plan_step(cluster, inst, repair, step, free, start, iallocator)
        if isinstance(plan, Blocked):
            return Decision(
                name,
                Verdict.BLOCKED,
                f"repair {cur.id} step {step + 1} waits: {plan.why}",
                repair,
                problems=state.problems,
            )
        return Decision(
            name,
            Verdict.CONTINUE,
            f"repair {cur.id} ({cur.type.wire}) step {step + 1} of {STEPS[cur.type]}",
            repair,
            ops=plan.ops,
            touched=plan.touched,
            problems=state.problems,
        )
    return Decision(
        name,
        Verdict.FINISHED,
        f"repair {cur.id} ({cur.type.wire}) succeeded",
        add_tag=attrs.evolve(cur, jobs=jobs).with_result(RepairResult.SUCCESS, ts),
        remove_tags=remove,
        problems=state.problems,
    )


def decide_without_jobs(
    cluster: Cluster,
    inst: Instance,
    state: TagState,
    now: float,
    free: frozenset[str],
    iallocator: str | None = None,
) -> Decision:
    """Decision for any non-pending state (healthy, failed, error)."""
    if state.status is Status.ERROR:
        return Decision(inst.name, Verdict.ERROR, state.error, problems=state.problems)
    if state.status is Status.FAILED:
        assert state.current is not None
        return Decision(
            inst.name,
            Verdict.FAILED,
            f"repair {state.current.id} ({state.current.type.wire}) failed; "
            f"remove tag {state.current_text!r} once the instance is checked",
            problems=state.problems,
        )
    return plan_new(cluster, inst, state, now, free, iallocator)
