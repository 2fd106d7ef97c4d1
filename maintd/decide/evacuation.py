"""The evacuated list (``/1/evacuated``): which instances join it, which leave it.

Pure decisions; the steps do the I/O.  An instance joins the list when a job
maintd submits moves a Xen instance (``xen-pvm``/``xen-hvm``) off an offline
or drained node: harep's failover, migrate or recreate-disks-elsewhere, an
incident evacuation's migrate/failover of a primary, or a balancing move --
also when the job is only found in Ganeti's queue by reconciliation
(:func:`joins_adopted`).
Such an instance has no ``xen-cpu-avg-load`` data on its new primary for a
while (the collector averages over time), and the balancer must not treat
the gap as an error.  Instances of other hypervisors never join: their load
is the node's overall CPU load.

An instance leaves the list once its primary's ``xen-cpu-avg-load`` report
names it again, or when it is no longer in the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from maintd.cluster.model import Cluster, Node
from maintd.daemon.state import MaintState
from maintd.decide.balance.load import XEN_HYPERVISORS
from maintd.decide.reason import HAREP, INCIDENT
from maintd.decide.reconcile import QueueJob

#: RAPI calls (harep's ``Op.method``) that put an instance on another primary.
MOVING_METHODS = frozenset({"migrate_instance", "failover_instance", "recreate_disks"})


def joins(cluster: Cluster, instance: str) -> bool:
    """True when moving ``instance`` now evacuates it: a Xen instance whose
    primary (in this round's snapshot) is offline or drained."""
    inst = cluster.instances.get(instance)
    if inst is None or inst.hypervisor not in XEN_HYPERVISORS:
        return False
    node = cluster.nodes.get(inst.primary)
    return node is None or node.offline or node.drained


def joins_by_method(cluster: Cluster, instance: str, method: str) -> bool:
    """:func:`joins` for a RAPI call: only calls that change the primary count."""
    return method in MOVING_METHODS and joins(cluster, instance)


def adopted_moves(state: MaintState, jobs: Iterable[QueueJob]) -> list[QueueJob]:
    """The jobs among ``jobs`` (ours, new to the state) that may have evacuated
    an instance and that the state knows from now on: unfinished ones (now
    awaited) and those of incidents the state holds (applied or rebuilt).
    Finished harep or balancing jobs stay unknown to the state, so they would
    be "new" in every round until Ganeti archives them: not considered.
    """
    return [j for j in jobs if j.moved_instances
            and (j.pending or (j.reason.kind == INCIDENT and state.incident(j.reason.id)))]


def joins_adopted(cluster: Cluster, instance: str, job: QueueJob) -> bool:
    """True when ``job``, one of ours that the state did not know (found in
    Ganeti's queue after a crash or a master failover), evacuated ``instance``.

    Still running: :func:`joins` on this round's snapshot (its primary is
    still the offline or drained node).  Finished successfully: an
    incident's or harep's move always leaves an offline or drained node, so
    a Xen instance joins; a finished balancing move cannot tell where it came
    from and does not.  A failed or cancelled job moved nothing.  (Which
    jobs are considered at all: :func:`adopted_moves`.)
    """
    inst = cluster.instances.get(instance)
    if inst is None or inst.hypervisor not in XEN_HYPERVISORS:
        return False
    if job.pending:
        return joins(cluster, instance)
    return job.status == "success" and job.reason.kind in (INCIDENT, HAREP)


def added(state: MaintState, names: Iterable[str]) -> MaintState:
    """``state`` with ``names`` appended to the evacuated list (no duplicates)."""
    current = tuple(state.evacuated)
    new = tuple(dict.fromkeys(n for n in names if n not in current))
    if not new:
        return state
    return attrs.evolve(state, evacuated=current + new)


def nodes_to_ask(cluster: Cluster, evacuated: Iterable[str]) -> list[Node]:
    """The primaries whose ``xen-cpu-avg-load`` can take listed instances off the list.

    Offline primaries are not asked (their mond is not expected to answer);
    drained ones are: an instance still there (a failed move) has data.
    """
    names: set[str] = set()
    for name in evacuated:
        inst = cluster.instances.get(name)
        node = cluster.nodes.get(inst.primary) if inst is not None else None
        if node is not None and not node.offline:
            names.add(node.name)
    return [cluster.nodes[n] for n in sorted(names)]


def remaining(
    cluster: Cluster,
    evacuated: Iterable[str],
    reported: Mapping[str, Iterable[str]],
) -> tuple[str, ...]:
    """The evacuated list after pruning.

    ``reported`` maps a node name to the instance names its
    ``xen-cpu-avg-load`` report has data for; a node missing from it (not
    asked, or its mond failed) keeps its instances on the list.  Instances
    gone from the cluster leave.
    """
    seen = {node: set(names) for node, names in reported.items()}
    out: list[str] = []
    for name in dict.fromkeys(evacuated):
        inst = cluster.instances.get(name)
        if inst is None:
            continue
        if name in seen.get(inst.primary, ()):
            continue
        out.append(name)
    return tuple(out)
