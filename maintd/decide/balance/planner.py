"""hbal's greedy balancing loop (``Cluster.tryBalance`` / ``Hbal.iterateDepth``).

Each step evaluates every allowed move of every movable instance, in
batches (see :mod:`maintd.decide.balance.moves`), and applies the best one when it
improves the score enough: ``new < old`` and (``old > min_gain_limit`` or
``old - new >= min_gain``).  Candidates are ranked in hbal's order (instance
order; failover first, then targets in node order, then move kinds in
hbal's order) so equal scores resolve the way hbal resolves them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import attrs
import numpy as np

from maintd.cluster.model import Cluster
from maintd.decide.balance.moves import (
    Batch,
    Move,
    PeerTops,
    apply_move,
    cluster_stats,
    score_outcome,
    simulate,
)
from maintd.decide.balance.score import (
    MIRROR_EXTERNAL,
    MIRROR_INTERNAL,
    NODE_COLS,
    State,
    Util,
    build_state,
    compute_cv,
    optimal_cv,
)

#: Candidate pairs evaluated per NumPy batch (bounds peak memory).
BATCH_PAIRS = 8000


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


def _eligible(state: State, opts: Options, allowed: np.ndarray) -> np.ndarray:
    inst = state.inst
    ni = len(state.inst_names)
    if ni == 0:
        return np.zeros(0, dtype=np.int64)
    p = inst["pnode"].astype(np.int64)
    s = inst["snode"].astype(np.int64)
    ok = state.movable & state.inst_in_group
    if opts.evac_mode:
        off = state.node["offline"] != 0
        ok &= off[p] | ((s >= 0) & off[np.maximum(s, 0)])
    if opts.allowed_nodes is not None:
        ok &= allowed[p] & ((s < 0) | allowed[np.maximum(s, 0)])
    return np.flatnonzero(ok)


def best_move(
    state: State, tops: PeerTops, opts: Options, allowed: np.ndarray
) -> tuple[float, int, Move, int] | None:
    """The best (score, instance, move, target) over all candidates, or None."""
    state.node_stack = np.stack([state.node[k] for k in NODE_COLS])
    try:
        return _best_move(state, tops, opts, allowed)
    finally:
        state.node_stack = None


def _best_move(
    state: State, tops: PeerTops, opts: Options, allowed: np.ndarray
) -> tuple[float, int, Move, int] | None:
    stats = cluster_stats(state)
    online = (state.node["offline"] == 0) & state.in_group & allowed
    targets = np.flatnonzero(online)
    victims = _eligible(state, opts, allowed)
    if len(victims) == 0:
        return None
    p = state.inst["pnode"][victims].astype(np.int64)
    s = state.inst["snode"][victims].astype(np.int64)
    mirror = state.mirror[victims]
    is_target = np.zeros(len(state.node_names), dtype=bool)
    is_target[targets] = True
    use_sec = (s >= 0) & is_target[np.maximum(s, 0)] & opts.instance_moves
    p_drained = state.node["offline"][p] != 0
    internal = mirror == MIRROR_INTERNAL
    external = mirror == MIRROR_EXTERNAL
    rest = opts.restricted_migration

    kinds: dict[Move, np.ndarray] = {}
    disk = opts.disk_moves
    full = internal & disk & opts.instance_moves & ~(rest & ~p_drained)
    kinds[Move.REPLACE_SECONDARY] = internal & disk
    kinds[Move.REPLACE_AND_FAILOVER] = full
    kinds[Move.REPLACE_PRIMARY] = full & use_sec & ~rest
    kinds[Move.FAILOVER_AND_REPLACE] = full & use_sec
    kinds[Move.FAILOVER_TO_ANY] = external & opts.instance_moves
    failover_ok = internal & use_sec

    best: tuple[float, tuple[int, int], int, Move, int] | None = None
    tol = 1e-12

    def consider(
        scores: np.ndarray, keys: np.ndarray, ii: np.ndarray, move: Move, tt: np.ndarray
    ) -> None:
        nonlocal best
        if len(scores) == 0:
            return
        m = float(scores.min())
        if not np.isfinite(m):
            return
        if best is not None and m > best[0] + tol * max(1.0, abs(best[0])):
            return
        cand = np.flatnonzero(scores <= m + tol * max(1.0, abs(m)))
        j = cand[np.lexsort((keys[cand, 1], keys[cand, 0]))[0]]
        key = (int(keys[j, 0]), int(keys[j, 1]))
        entry = (float(scores[j]), key, int(ii[j]), move, int(tt[j]))
        if best is None:
            best = entry
            return
        bm = best[0]
        if m < bm - tol * max(1.0, abs(bm)):
            best = entry
        elif key < best[1]:
            best = (min(entry[0], bm), key, entry[2], entry[3], entry[4])

    force = opts.ignore_soft_errors
    # Failover (no target).
    fo = np.flatnonzero(failover_ok)
    for start in range(0, len(fo), BATCH_PAIRS):
        sel = fo[start : start + BATCH_PAIRS]
        ii = victims[sel]
        b = Batch(state=state, tops=tops, ii=ii, force=force)
        tt = np.zeros(len(ii), dtype=np.int64)
        sc = score_outcome(b, stats, simulate(b, Move.FAILOVER, tt))
        keys = np.stack([sel, np.zeros(len(sel), dtype=np.int64)], axis=1)
        consider(sc, keys, ii, Move.FAILOVER, tt - 1)

    nt = len(targets)
    if nt:
        tpos = np.arange(nt)
        per_chunk = max(1, BATCH_PAIRS // nt)
        for move, mask in kinds.items():
            vs = np.flatnonzero(mask)
            for start in range(0, len(vs), per_chunk):
                sel = vs[start : start + per_chunk]
                vi = np.repeat(sel, nt)
                tt = np.tile(targets, len(sel))
                tp = np.tile(tpos, len(sel))
                keep = (tt != p[vi]) & (tt != s[vi])
                vi, tt, tp = vi[keep], tt[keep], tp[keep]
                if len(vi) == 0:
                    continue
                ii = victims[vi]
                b = Batch(state=state, tops=tops, ii=ii, force=force)
                uniq, inv = np.unique(vi, return_inverse=True)
                bu = Batch(state=state, tops=tops, ii=victims[uniq], force=force)
                sc = score_outcome(b, stats, simulate(b, move, tt, bu, inv))
                order = int(move) if move != Move.FAILOVER_TO_ANY else 0
                keys = np.stack([vi, 1 + tp * 6 + order], axis=1)
                consider(sc, keys, ii, move, tt)
    if best is None:
        return None
    return best[0], best[2], best[3], best[4]


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
) -> Plan:
    """Balance ``group`` of ``cluster`` (all nodes when None) like hbal would.

    ``stop(move)`` is asked before each move is taken; True ends the plan
    without it (maintd stops at the end of the first jobset).
    """
    opts = opts or Options()
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
    while (opts.max_length < 0 or len(moves) < opts.max_length) and cur_cv > min_score:
        found = best_move(state, tops, opts, allowed)
        if found is None:
            break
        new_cv, inst, move, target = found
        # The batch scores are incremental sums: demand a gain above float noise.
        if not (
            new_cv < cur_cv - 1e-10 * max(1.0, abs(cur_cv))
            and (cur_cv > opts.min_gain_limit or cur_cv - new_cv >= opts.min_gain)
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
