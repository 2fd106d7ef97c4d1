"""hbal's greedy balancing loop (``Cluster.tryBalance`` / ``Hbal.iterateDepth``).

Each step takes hbal's best move (:mod:`maintd.decide.balance.search`: the
first of the lowest-scoring candidates in hbal's order, found without
rescoring candidates that provably cannot win) and applies it when it
improves the score enough: ``new < old`` and (``old > min_gain_limit`` or
``old - new >= min_gain``), both scores folded exactly like hbal's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import attrs
import numpy as np

from maintd.cluster.model import Cluster
from maintd.decide.balance.kernel import warm_up
from maintd.decide.balance.moves import Move, PeerTops, apply_move
from maintd.decide.balance.score import (
    State,
    Util,
    build_state,
    compute_cv,
    optimal_cv,
)
from maintd.decide.balance.search import Search, SearchOptions


@attrs.frozen
class Options:
    """Balancing options, named like hbal's."""

    max_length: int = -1  # -l; negative: unlimited
    min_gain: float = 0.01  # -g
    min_gain_limit: float = 0.1  # --min-gain-limit
    min_score: float = 1e-9  # -e
    disk_moves: bool = True  # --no-disk-moves
    instance_moves: bool = True  # --no-instance-moves
    restricted_migration: bool = False
    ignore_soft_errors: bool = False
    evac_mode: bool = False
    #: Node names moves may touch (maintd's free nodes); None = all online nodes.
    allowed_nodes: Collection[str] | None = None


@attrs.frozen
class PlannedMove:
    """One step of the solution."""

    instance: str
    kind: Move
    old_primary: str
    old_secondary: str | None
    new_primary: str
    new_secondary: str | None
    score: float  # cluster score after this step

    @property
    def nodes(self) -> tuple[str, ...]:
        """Nodes the move touches (hbal's ``involvedNodes``), in first-seen order."""
        seen: list[str] = []
        for n in (self.new_primary, self.new_secondary, self.old_primary, self.old_secondary):
            if n is not None and n not in seen:
                seen.append(n)
        return tuple(seen)

    @property
    def target(self) -> str:
        """The node the move brings the instance to (hbal's ``to``)."""
        if self.kind in (Move.REPLACE_SECONDARY, Move.FAILOVER_AND_REPLACE):
            return self.new_secondary or self.new_primary
        return self.new_primary


@attrs.frozen
class Plan:
    initial_score: float
    final_score: float
    optimal_score: float
    moves: tuple[PlannedMove, ...]
    group: str | None
    state: State = attrs.field(repr=False, eq=False)
    initial_imem: np.ndarray = attrs.field(repr=False, eq=False)
    #: CPU seconds of each step's search (the last one found no move).
    step_seconds: tuple[float, ...] = attrs.field(default=(), repr=False, eq=False)
    #: CPU seconds spent compiling (or loading from cache) the scoring kernel
    #: before the first step; 0 when this process had done it already.
    kernel_seconds: float = attrs.field(default=0.0, repr=False, eq=False)


def new_nodes(move: Move, p: int, s: int, t: int) -> tuple[int, int]:
    """(new primary, new secondary) of a move; -1 for no secondary."""
    return {
        Move.FAILOVER: (s, p),
        Move.FAILOVER_TO_ANY: (t, s),
        Move.REPLACE_PRIMARY: (t, s),
        Move.REPLACE_SECONDARY: (p, t),
        Move.REPLACE_AND_FAILOVER: (t, p),
        Move.FAILOVER_AND_REPLACE: (s, t),
    }[move]


def _name(state: State, idx: int) -> str | None:
    return state.node_names[idx] if idx >= 0 else None


def plan(
    cluster: Cluster,
    opts: Options | None = None,
    *,
    group: str | None = None,
    util: Mapping[str, Util] | None = None,
    mem_pool: Mapping[str, float] | None = None,
    on_move: Callable[[PlannedMove], None] | None = None,
    on_start: Callable[[float], None] | None = None,
    stop: Callable[[PlannedMove], bool] | None = None,
    incremental: bool = True,
) -> Plan:
    """Balance ``group`` of ``cluster`` (all nodes when None) like hbal would.

    ``stop(move)`` is asked before each move is taken; True ends the plan
    without it (maintd stops at the end of the first jobset).
    ``incremental=False`` scores every candidate every step (the plain
    search the incremental one must agree with).
    """
    opts = opts or Options()
    kernel_seconds = warm_up()
    state = build_state(cluster, group, util, mem_pool)
    allowed = np.ones(len(state.node_names), dtype=bool)
    if opts.allowed_nodes is not None:
        names = set(opts.allowed_nodes)
        allowed = np.array([n in names for n in state.node_names], dtype=bool)
    tops = PeerTops.of(state.peers)
    imem0 = state.node["imem"].copy()
    ini_cv = compute_cv(state)
    opt_cv = optimal_cv(state)
    cur_cv = ini_cv
    if on_start is not None:
        on_start(ini_cv)
    moves: list[PlannedMove] = []
    min_score = opt_cv + opts.min_score
    search = Search(
        state,
        tops,
        SearchOptions(
            disk_moves=opts.disk_moves,
            instance_moves=opts.instance_moves,
            restricted_migration=opts.restricted_migration,
            ignore_soft_errors=opts.ignore_soft_errors,
            evac_mode=opts.evac_mode,
            restrict_nodes=opts.allowed_nodes is not None,
        ),
        allowed,
        incremental=incremental,
    )
    while (opts.max_length < 0 or len(moves) < opts.max_length) and cur_cv > min_score:
        found = search.best(cur_cv)
        if found is None:
            break
        new_cv, inst, move, target = found
        # tryBalance: exact scores, like hbal's (see search.py).
        if not (
            new_cv < cur_cv and (cur_cv > opts.min_gain_limit or cur_cv - new_cv >= opts.min_gain)
        ):
            break
        old_p = int(state.inst["pnode"][inst])
        old_s = int(state.inst["snode"][inst])
        new_p, new_s = new_nodes(move, old_p, old_s, target)
        pm = PlannedMove(
            instance=state.inst_names[inst],
            kind=move,
            old_primary=state.node_names[old_p],
            old_secondary=_name(state, old_s),
            new_primary=state.node_names[new_p],
            new_secondary=_name(state, new_s),
            score=new_cv,
        )
        if stop is not None and stop(pm):
            break
        apply_move(state, tops, inst, move, target)
        search.moved([n for n in (old_p, old_s, new_p, new_s) if n >= 0])
        cur_cv = compute_cv(state)
        pm = attrs.evolve(pm, score=cur_cv)
        moves.append(pm)
        if on_move is not None:
            on_move(pm)
    return Plan(
        initial_score=ini_cv,
        final_score=cur_cv,
        optimal_score=opt_cv,
        moves=tuple(moves),
        group=group,
        state=state,
        initial_imem=imem0,
        step_seconds=tuple(c.seconds for c in search.costs),
        kernel_seconds=kernel_seconds,
    )


def final_cluster(cluster: Cluster, result: Plan) -> Cluster:
    """``cluster`` with the plan's moves applied (instance placement and node lists)."""
    st = result.state
    insts = dict(cluster.instances)
    for pm in result.moves:
        it = insts[pm.instance]
        secs = (pm.new_secondary,) if pm.new_secondary is not None else ()
        insts[pm.instance] = attrs.evolve(it, primary=pm.new_primary, secondaries=secs)
    prim: dict[str, list[str]] = {n: [] for n in cluster.nodes}
    sec: dict[str, list[str]] = {n: [] for n in cluster.nodes}
    for it in insts.values():
        prim[it.primary].append(it.name)
        for s in it.secondaries:
            sec[s].append(it.name)
    nodes = {}
    for name, node in cluster.nodes.items():
        k = st.node_index[name]
        # Free disk/spindles as htools tracks them (what ``hbal -S`` writes); free
        # memory shifted by the instance memory moved, so that reloading gives
        # the same unaccounted memory and free memory as the planner's state.
        moved_mem = int(st.node["imem"][k] - result.initial_imem[k])
        nodes[name] = attrs.evolve(
            node,
            primaries=tuple(prim[name]),
            secondaries=tuple(sec[name]),
            mfree=node.mfree - moved_mem,
            dfree=int(st.node["fdsk"][k]),
            spindles_free=int(st.node["fsp"][k]),
        )
    return attrs.evolve(cluster, nodes=nodes, instances=insts)
