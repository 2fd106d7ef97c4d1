"""Plan a whole evacuation before the first job, and every move again on each snapshot.

:func:`plan_evacuations` plans, on one snapshot, the evacuation of several
nodes in turn (those in progress first, then the ones about to start): every
primary and every secondary instance of each node gets a target in the
node's group, checked with the balancer's own node model
(:mod:`maintd.decide.balance`): ``add_pri`` / ``add_sec`` with their strict
checks, i.e. room in memory and disk, the instance policy's vCPU and spindle
ratios, exclusion and migration tags, and no target that newly fails N+1.
N+1 here is the operator's reading, stricter than htools' at the boundary:
a node fails N+1 when its free memory is *below* what it would have to take
over from one primary peer (htools already counts equality as failing, and
would then let more memory onto a node that can exactly take over its peers).
Each planned move is applied to the model before the next one is chosen, so
the plan holds as a whole; the plans of later nodes see the moves of earlier
ones.  A node whose evacuation cannot be planned gets a reason instead, and
its partial moves are discarded.

:func:`next_step` turns a node's plan into this round's job (an
:mod:`maintd.decide.incidents` plan): drain first, then the first move of an
instance whose nodes are free this round.  The round re-plans on every
snapshot, so a move is only ever submitted from a plan that holds on the
current cluster.

Moves, as the daemon carries them out (one job each):

``to-secondary``   DRBD primary migrated (or failed over) to its secondary
                   (the node keeps the instance as secondary; replaced later)
``new-secondary``  DRBD instance gets a new secondary ``target`` (replace-disks)
``to-node``        shared-storage / diskless primary moved to ``target``
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Sequence

import attrs
import numpy as np

from maintd.cluster.model import LOCAL_TEMPLATES, Cluster, Instance
from maintd.decide import incidents as I
from maintd.decide.balance.moves import (
    Batch,
    Move,
    PeerTops,
    Row,
    add_pri,
    add_sec,
    apply_move,
    gather,
    remove_sec,
    unallocated_memory,
)
from maintd.decide.balance.score import State, build_state

TO_SECONDARY = "to-secondary"
NEW_SECONDARY = "new-secondary"
TO_NODE = "to-node"


@attrs.frozen
class Step:
    instance: str
    kind: str
    target: str | None = None


@attrs.frozen
class NodePlan:
    node: str
    #: The moves, in order (every instance's moves in the order they run).
    steps: tuple[Step, ...] = ()
    #: Why the evacuation cannot be done now (then ``steps`` is empty).
    reason: str | None = None
    #: Instances that cannot leave the node at all (local disks): the node is
    #: drained all the same and the incident fails naming them.
    unmovable: tuple[str, ...] = ()
    #: The node is not drained (nor offline) yet: the first job drains it.
    needs_drain: bool = True

    @property
    def feasible(self) -> bool:
        return self.reason is None

    @property
    def takes_slot(self) -> bool:
        """Whether starting this evacuation puts the node under evacuation.

        Not when the node is drained already and an unmovable instance makes
        the incident fail at once: nothing would move.
        """
        return self.needs_drain or not self.unmovable


class _Impossible(Exception):
    pass


def _unmovable(inst: Instance) -> str | None:
    if inst.disk_template in LOCAL_TEMPLATES:
        return (f"instance {inst.name} has disk template {inst.disk_template} and cannot be "
                "moved off the node")
    if not (inst.is_drbd or inst.is_shared):
        return f"instance {inst.name} has unsupported disk template {inst.disk_template!r}"
    return None


class _Model:
    """The balancer's numeric model of the snapshot, plus the candidate targets."""

    def __init__(self, cluster: Cluster, excluded: Collection[str]) -> None:
        self.cluster = cluster
        self.state: State = build_state(cluster)
        self.tops = PeerTops.of(self.state.peers)
        names = self.state.node_names
        usable = np.array([cluster.nodes[n].usable and n not in excluded for n in names],
                          dtype=bool)
        self.usable = usable
        self.groups = np.array([cluster.nodes[n].group for n in names], dtype=object)

    def snapshot(self) -> tuple[State, PeerTops]:
        return copy.deepcopy(self.state), copy.deepcopy(self.tops)

    def restore(self, saved: tuple[State, PeerTops]) -> None:
        self.state, self.tops = saved

    def idx(self, name: str) -> int:
        return self.state.node_index[name]

    def candidates(self, group: str, exclude: Iterable[int]) -> np.ndarray:
        mask = self.usable & (self.groups == group)
        for k in exclude:
            if k >= 0:
                mask[k] = False
        return np.flatnonzero(mask)

    def _ls(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        st = self.state
        if not st.has_locations:
            return np.zeros(len(a))
        return np.asarray(np.sum(st.loc[a] & st.loc[b], axis=1), dtype=float)

    def _mig_bad(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.state.mig_ok is None:
            return np.zeros(len(a), dtype=bool)
        return np.asarray(~self.state.mig_ok[a, b])

    @staticmethod
    def _newly_short(before: Row, after: Row) -> np.ndarray:
        """Targets that could take over every peer's instances before the move
        and cannot after it (free memory below the largest peer's need)."""
        short_before = unallocated_memory(before) < before["rmem"]
        return ~short_before & (unallocated_memory(after) < after["rmem"])

    def _batch(self, inst: int, k: int) -> Batch:
        return Batch(state=self.state, tops=self.tops, ii=np.full(k, inst), force=False)

    @staticmethod
    def _best(targets: np.ndarray, fail: np.ndarray, row: dict[str, np.ndarray]) -> int | None:
        """The feasible target left with the most free memory, then disk (then node order)."""
        ok = np.flatnonzero(~fail)
        if len(ok) == 0:
            return None
        free = np.trunc(row["tmem"]) - row["nmem"] - row["imem"] - row["xpos"]
        order = np.lexsort((np.arange(len(ok)), -row["fdsk"][ok], -free[ok]))
        return int(targets[ok[order[0]]])

    def primary_target(self, inst: int, group: str, exclude: Iterable[int]) -> int | None:
        """Where a primary can go (``add_pri`` strict on every candidate)."""
        st = self.state
        targets = self.candidates(group, exclude)
        if len(targets) == 0:
            return None
        b = self._batch(inst, len(targets))
        s = int(st.inst["snode"][inst])
        p = int(st.inst["pnode"][inst])
        ls = self._ls(targets, np.full(len(targets), s)) if s >= 0 else np.zeros(len(targets))
        before = gather(st, targets)
        row, fail = add_pri(b, before, ls, np.ones(len(targets), dtype=bool))
        fail = fail | self._mig_bad(np.full(len(targets), p), targets)
        fail |= self._newly_short(before, row)
        return self._best(targets, fail, row)

    def secondary_fits(self, inst: int) -> bool:
        """Whether a DRBD primary can move to its current secondary."""
        st = self.state
        p, s = int(st.inst["pnode"][inst]), int(st.inst["snode"][inst])
        b = self._batch(inst, 1)
        one = np.array([s])
        before = gather(st, one)
        row = remove_sec(b, before, np.array([p]))
        after, fail = add_pri(b, row, self._ls(one, np.array([p])), np.ones(1, dtype=bool))
        fail = fail | self._mig_bad(np.array([p]), one) | self._newly_short(before, after)
        return not bool(fail[0])

    def secondary_target(self, inst: int, group: str, exclude: Iterable[int]) -> int | None:
        """A new secondary (``add_sec`` strict on every candidate)."""
        st = self.state
        p = int(st.inst["pnode"][inst])
        targets = self.candidates(group, exclude)
        if len(targets) == 0:
            return None
        b = self._batch(inst, len(targets))
        before = gather(st, targets)
        row, fail = add_sec(b, before, np.full(len(targets), p),
                            np.ones(len(targets), dtype=bool))
        return self._best(targets, fail | self._newly_short(before, row), row)

    def apply(self, inst: int, move: Move, target: int) -> None:
        apply_move(self.state, self.tops, inst, move, target)


def _no_room(node: str, what: str, inst: Instance, group: str, mem: bool, disk: bool,
             candidates: int) -> str:
    needs = []
    if mem:
        needs.append(f"{inst.memory} MiB memory")
    if disk and inst.is_drbd:
        needs.append(f"{inst.disk} MiB disk")
    need = f" ({', '.join(needs)})" if needs else ""
    why = (f"none of the {candidates} usable node(s) of group {group} can take it within the "
           "instance policy without failing N+1") if candidates else (
           f"group {group} has no other usable node")
    return f"cannot evacuate {node}: no room for {what}{need}: {why}"


def _plan_node(model: _Model, name: str) -> NodePlan:
    cluster = model.cluster
    node = cluster.nodes[name]
    st = model.state
    k = model.idx(name)
    group = node.group
    primaries = sorted((i for i in cluster.instances.values() if i.primary == name),
                       key=lambda i: i.name)
    secondaries = sorted((i for i in cluster.instances.values()
                          if name in i.secondaries and i.primary != name), key=lambda i: i.name)
    unmovable = [r for r in map(_unmovable, primaries) if r]
    if unmovable:
        return NodePlan(name, unmovable=tuple(unmovable))
    steps: list[Step] = []
    later: list[Instance] = []  # became a secondary on the node
    for inst in primaries:
        i = st.inst_index[inst.name]
        if inst.is_drbd:
            s = int(st.inst["snode"][i])
            if s < 0:
                raise _Impossible(f"cannot evacuate {name}: DRBD instance {inst.name} has no "
                                  "secondary node in the cluster")
            if model.usable[s] and model.secondary_fits(i):
                steps.append(Step(inst.name, TO_SECONDARY))
                model.apply(i, Move.FAILOVER, -1)
            else:
                # Secondary unusable, full, or itself under repair: a new
                # secondary first (which must be able to take the primary),
                # then the primary moves there.
                t = model.primary_target(i, group, (k, s))
                if t is None:
                    raise _Impossible(_no_room(
                        name, f"instance {inst.name}", inst, group, True, True,
                        len(model.candidates(group, (k, s)))))
                steps.append(Step(inst.name, NEW_SECONDARY, st.node_names[t]))
                steps.append(Step(inst.name, TO_SECONDARY))
                model.apply(i, Move.REPLACE_AND_FAILOVER, t)
            later.append(inst)
            continue
        t = model.primary_target(i, group, (k,))
        if t is None:
            raise _Impossible(_no_room(name, f"instance {inst.name}", inst, group, True, False,
                                       len(model.candidates(group, (k,)))))
        steps.append(Step(inst.name, TO_NODE, st.node_names[t]))
        model.apply(i, Move.FAILOVER_TO_ANY, t)
    for inst in [*secondaries, *later]:
        if not inst.is_drbd:
            raise _Impossible(f"cannot evacuate {name}: instance {inst.name} has disk template "
                              f"{inst.disk_template} with a secondary on {name}")
        i = st.inst_index[inst.name]
        p = int(st.inst["pnode"][i])
        pgroup = str(model.groups[p])
        t = model.secondary_target(i, pgroup, (k, p))
        if t is None:
            raise _Impossible(_no_room(name, f"the secondary of {inst.name}", inst, pgroup,
                                       True, True, len(model.candidates(pgroup, (k, p)))))
        steps.append(Step(inst.name, NEW_SECONDARY, st.node_names[t]))
        model.apply(i, Move.REPLACE_SECONDARY, t)
    return NodePlan(name, steps=tuple(steps))


class Planner:
    """Plans evacuations one node after the other on one snapshot (each on top
    of the ones planned before).

    ``excluded``: nodes that never receive an instance (nodes with an active
    incident).  A node whose evacuation cannot be planned leaves the model as
    it was.  The numeric model is built on the first :meth:`plan`.
    """

    def __init__(self, cluster: Cluster, excluded: Collection[str] = ()) -> None:
        self.cluster = cluster
        self.excluded = set(excluded)
        self._model: _Model | None = None
        self.plans: dict[str, NodePlan] = {}

    def takes_slot(self, node: str) -> bool:
        """Cheap :attr:`NodePlan.takes_slot` (no planning): False only for a
        drained (or offline) node with an instance that cannot leave it."""
        n = self.cluster.nodes.get(node)
        if n is None or not (n.drained or n.offline):
            return True
        return not any(i.primary == node and _unmovable(i)
                       for i in self.cluster.instances.values())

    def plan(self, node: str) -> NodePlan:
        if node in self.plans:
            return self.plans[node]
        if node not in self.cluster.nodes:
            return NodePlan(node, reason=f"node {node} is not in the cluster")
        try:
            if self._model is None:
                self._model = _Model(self.cluster, self.excluded | {node})
            model = self._model
            model.usable[model.idx(node)] = False
            saved = model.snapshot()
        except Exception as e:  # a snapshot the model cannot take: say so, act on nothing
            return NodePlan(node, reason=f"cannot plan the evacuation of {node}: "
                                         f"{type(e).__name__}: {e}")
        try:
            result = _plan_node(model, node)
        except _Impossible as e:
            result = NodePlan(node, reason=str(e))
            model.restore(saved)
        except Exception as e:
            result = NodePlan(node, reason=f"cannot plan the evacuation of {node}: "
                                           f"{type(e).__name__}: {e}")
            model.restore(saved)
        node_obj = self.cluster.nodes[node]
        result = attrs.evolve(result, needs_drain=not (node_obj.drained or node_obj.offline))
        self.plans[node] = result
        return result


def plan_evacuations(
    cluster: Cluster, nodes: Sequence[str], excluded: Collection[str] = ()
) -> dict[str, NodePlan]:
    """Plans for evacuating ``nodes`` in turn (each on top of the ones before);
    ``nodes`` never receive instances, nor do ``excluded`` ones."""
    planner = Planner(cluster, set(excluded) | set(nodes))
    return {n: planner.plan(n) for n in dict.fromkeys(nodes)}


# --------------------------------------------------------------------------
# this round's job


def next_step(
    cluster: Cluster,
    plan: NodePlan,
    *,
    failover: bool,
    available: set[str],
    busy: set[str],
    incident_nodes: set[str],
) -> I.Plan:
    """This round's job for the evacuation ``plan`` (see :func:`I.plan_evacuation`
    for ``available``, ``busy`` and ``incident_nodes``).

    The first move of the first instance whose nodes are free this round.  A
    move taken ahead of earlier moves of the plan shares no node with them
    (a skipped move is one whose node is busy, and every move touches the
    node being evacuated plus its target, so moves that load or unload the
    same node are skipped together), so its check on the plan still holds.
    """
    node = cluster.nodes[plan.node]
    mine = frozenset({node.name})
    if not plan.feasible:
        assert plan.reason is not None
        return I.Wait(plan.reason)
    if not (node.drained or node.offline):
        return I.Drain(node.name, touched=mine)
    if plan.unmovable:
        return I.Fail("; ".join(plan.unmovable))
    if not plan.steps:
        return I.Finish(touched=mine)
    free = set(available) - busy - incident_nodes - {node.name}
    waits: list[str] = []
    started: set[str] = set()
    for step in plan.steps:
        if step.instance in started:
            continue  # one move per instance and round; the next one is planned again
        started.add(step.instance)
        inst = cluster.instances[step.instance]
        if step.kind == NEW_SECONDARY:
            assert step.target is not None
            touched = frozenset({node.name, inst.primary, *inst.secondaries, step.target})
            blocked = sorted((touched - {node.name} - {step.target}) & busy)
            if step.target not in free:
                waits.append(f"target {step.target} for {inst.name} is busy this round")
            elif blocked:
                waits.append(f"node(s) {', '.join(blocked)} of {inst.name} are busy this round")
            else:
                return I.ReplaceSecondary(inst.name, step.target, touched=touched)
            continue
        verb_failover = failover or not inst.running or node.offline
        if step.kind == TO_SECONDARY:
            sec = inst.secondary
            if sec is None or sec not in free:
                waits.append(f"secondary {sec} of {inst.name} is busy this round")
                continue
            return I.MovePrimary(inst.name, None, verb_failover,
                                 touched=frozenset({node.name, sec}),
                                 ignore_consistency=node.offline)
        assert step.target is not None
        if step.target not in free:
            waits.append(f"target {step.target} for {inst.name} is busy this round")
            continue
        return I.MovePrimary(inst.name, step.target, verb_failover,
                             touched=frozenset({node.name, step.target}),
                             ignore_consistency=node.offline)
    return I.Wait("; ".join(waits))
