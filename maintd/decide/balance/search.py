"""hbal's best-move search (``Cluster.checkMove``), made incremental.

Every step hbal scores every allowed move of every movable instance and
keeps the first best one (``compareTables`` keeps the current table unless
the new one is strictly better, so among equal scores the first in its
order wins: instances in index order; per instance the failover, then the
target nodes in index order, per target the move kinds in
``possibleMoves`` order).  :class:`Search` returns exactly that move, while
scoring only the candidates that can still be the best:

* A *record* is one (move kind, instance) pair: its candidates are the
  instance's moves of that kind to every target node.  When a record is
  scored in full, it keeps its K best gains (score minus the cluster's
  score) with their targets, the K-th gain as a bound for the other
  targets, and per standard-deviation component the largest change of the
  component's sum, the largest change of its value and the smallest
  variance after the move over its candidates.
* A candidate's change of every node figure depends only on the nodes it
  touches.  After a move, the moved instance's records are scored again in
  full, and every record is scored on the touched target nodes.  Records
  whose instance stayed on a touched node keep their bounds: their
  target-independent part (the instance's own slots, kept in the kernel's
  ``SourceCache``) is recomputed and its change bounds theirs (see below).
  For the other candidates only the cluster-wide sums changed: the
  gain of a sum component is unchanged, and the gain of a standard
  deviation drifts by at most a bound computed from the records' figures
  and the change of the cluster's sums.  The bounds accumulate until the
  record is scored again.
* The drift bound (``kernel.drift_update``), per deviation component: a
  candidate changes the component's sum by ``d`` (|d| <= dmax) and leaves
  variance ``u`` (u >= umin); its gain is ``g = sqrt(u) - sqrt(v)`` (|g| <=
  gmax) where ``v`` is the cluster's variance.  When the cluster's sums
  move (sum by ``dS``, variance from v0 to v1, dv = |v1 - v0|) without the
  candidate's nodes, its new variance is ``u' = u + (v1 - v0) - 2 d dS /
  n^2``, so |u' - u| <= dv + h with h = 2 |dS| dmax / n^2, and u' >= u1 =
  umin - dv - h.  With P = sqrt(u) + sqrt(u') >= p = sqrt(umin) +
  sqrt(max(u1, 0)) and r = sqrt(v0) + sqrt(v1), the gain moves by
  X = |(sqrt(u') - sqrt(u)) - (sqrt(v1) - sqrt(v0))|, bounded two ways:
  first order, X <= min(sqrt(dv + h), (dv + h) / p) + |sqrt(v1) -
  sqrt(v0)| (|sqrt a - sqrt b| <= sqrt|a - b|; always finite); second
  order, writing the difference as -(v1 - v0)(g + g') / (P r) - e / P
  (|e| <= h, |g'| <= gmax + X) gives X (P - dv / r) <= 2 gmax dv / r + h,
  so X <= (2 gmax dv / r + h) / (p - dv / r) when dv < p r.  The smaller
  bound is taken (both hold), widened by 1e-6 relative plus 1e-15 for
  rounding; gmax grows by X and umin becomes u1.
* The source bound (``kernel.source_drift``): a record's target-independent
  part adds ``a`` to every candidate's sum of a component and ``b`` to its
  sum of squares; when it changes by ``da``/``db`` (its nodes' figures
  changed, the cluster's sums fixed), a sum component moves every score by
  exactly ``da``, and a deviation component's variance ``u = (Q + b')/n -
  ((S + d)/n)^2`` (``d`` the candidate's whole change of the sum, |d| <=
  dmax) moves by at most ``h = |db|/n + (2 (|S| + dmax) |da| + da^2)/n^2``,
  so its value by at most min(sqrt h, h / p) as above; dmax grows by |da|,
  umin falls by h.  The cluster's own drift is applied first (with the old
  part), then this one.  It holds for the candidates whose slots are all
  target-independent or the generic new-secondary slot (peer entry 0); the
  replace-primary and replace-and-failover candidates whose new secondary
  has a peer entry for the target are scored exactly instead, and a record
  whose part failed before and no longer does is scored in full.
* Candidates are scored by a compiled kernel (:mod:`~maintd.decide.balance.
  kernel`, numba): the same arithmetic as ``moves.simulate`` +
  ``moves.score_outcome`` one candidate at a time (``tests.
  test_balance_kernel`` ties the two to 1e-12 relative).  The part of a
  record's candidates that does not depend on the target (its instance's
  own slots) is cached when the record is scored in full and reused for
  its touched-column scoring: a record whose instance's nodes a move
  touched is always scored in full that step, so the cache of the others
  describes their unchanged nodes.
* A record whose lower bound (its best untouched gain, or its K-th gain
  when all K targets were touched, or the best touched-target gain, minus
  the accumulated drift) is above the best score found so far (plus a
  small tolerance) cannot hold the best move: it is skipped.  Records are
  scored in the order of their bounds until no bound is below the best.
* The incremental scores are sums that round differently from hbal's
  folds; every candidate within 1e-9 of the best is re-scored exactly like
  hbal (:func:`~maintd.decide.balance.moves.exact_scores`) and the first in
  hbal's order among the lowest wins.

Clusters with both exclusion and location tags have a cluster-wide score
component (the location-exclusion map) that any move changes: there every
record is scored in full each step (the plain, non-incremental search).
"""

from __future__ import annotations

import time
from collections.abc import Collection

import attrs
import numpy as np

from maintd.decide.balance.kernel import (
    READ,
    WRITE,
    SourceCache,
    context,
    drift_update,
    fold_columns,
    fold_full,
    refresh_sources,
    score_grid,
    source_drift,
)
from maintd.decide.balance.kernel import (
    bounds as kernel_bounds,
)
from maintd.decide.balance.moves import (
    Move,
    PeerTops,
    Stats,
    base_values,
    cluster_stats,
    exact_scores,
)
from maintd.decide.balance.score import (
    MIRROR_EXTERNAL,
    MIRROR_INTERNAL,
    NODE_COLS,
    STD_COLS,
    WEIGHTS,
    State,
)

#: Records visited per block in bound order: about this many candidate pairs
#: (the best score found so far prunes between blocks).
BATCH_PAIRS = 8000
#: Candidate pairs per kernel call at most (bounds the score matrix's memory).
CALL_PAIRS = 1 << 17
#: Best gains kept per record.
TOP_K = 4
#: Record kinds, in hbal's per-target order (failover-to-any: external mirrors only).
KINDS = (
    Move.REPLACE_SECONDARY,
    Move.REPLACE_AND_FAILOVER,
    Move.REPLACE_PRIMARY,
    Move.FAILOVER_AND_REPLACE,
    Move.FAILOVER_TO_ANY,
)
_ORDER = {k: (int(k) if k != Move.FAILOVER_TO_ANY else 0) for k in KINDS}
_NSTD = len(STD_COLS)
_W_STD = WEIGHTS[STD_COLS]
#: Relative tolerance under which two incremental scores may be an exact tie.
TIE_TOL = 1e-9


def _tol(x: float) -> float:
    return TIE_TOL * max(1.0, abs(x)) if np.isfinite(x) else 0.0


@attrs.frozen
class SearchOptions:
    """What the search may move (hbal's algorithm options)."""

    disk_moves: bool = True
    instance_moves: bool = True
    restricted_migration: bool = False
    ignore_soft_errors: bool = False
    evac_mode: bool = False
    restrict_nodes: bool = False


@attrs.define
class StepCost:
    """Work done by one step (for the benchmark's cost curve)."""

    seconds: float = 0.0
    pairs: int = 0
    records: int = 0
    #: Records that had to be rescored (their instance's nodes changed).
    dirty: int = 0
    #: Candidate pairs scored on the touched target nodes only.
    column_pairs: int = 0
    #: Records whose instance's nodes changed, bounded instead of rescored.
    refreshed: int = 0


def eligible(state: State, opts: SearchOptions, allowed: np.ndarray) -> np.ndarray:
    """Mask of instances hbal may move this step (``tryBalance``'s ``reloc_inst``)."""
    inst = state.inst
    ni = len(state.inst_names)
    if ni == 0:
        return np.zeros(0, dtype=bool)
    p = inst["pnode"].astype(np.int64)
    s = inst["snode"].astype(np.int64)
    ok = state.movable & state.inst_in_group
    if opts.evac_mode:
        off = state.node["offline"] != 0
        ok &= off[p] | ((s >= 0) & off[np.maximum(s, 0)])
    if opts.restrict_nodes:
        ok &= allowed[p] & ((s < 0) | allowed[np.maximum(s, 0)])
    return ok


class Search:
    """The best move of each step, with candidate scores kept between steps."""

    def __init__(
        self,
        state: State,
        tops: PeerTops,
        opts: SearchOptions,
        allowed: np.ndarray,
        incremental: bool = True,
    ) -> None:
        self.state = state
        self.tops = tops
        self.opts = opts
        self.allowed = allowed
        nn, ni = len(state.node_names), len(state.inst_names)
        online = (state.node["offline"] == 0) & state.in_group & allowed
        self.targets = np.flatnonzero(online)
        self.tpos = np.full(nn, -1, dtype=np.int64)
        self.tpos[self.targets] = np.arange(len(self.targets))
        self.incremental = incremental and not (state.has_tags and state.has_locations)
        nk = len(KINDS)
        self.step = 0
        self.touched_at = np.full(nn, -1, dtype=np.int64)
        self.touched: list[int] = []
        self.top_g = np.full((nk, ni, TOP_K), np.inf)
        self.top_t = np.zeros((nk, ni, TOP_K), dtype=np.int64)
        self.tail = np.full((nk, ni), np.inf)
        self.aux = np.full((nk, ni), np.inf)
        self.drift = np.zeros((nk, ni))
        self.evaluated = np.full((nk, ni), -1, dtype=np.int64)
        self.dmax = np.zeros((nk, ni, _NSTD))
        self.gmax = np.zeros((nk, ni, _NSTD))
        self.umin = np.full((nk, ni, _NSTD), np.inf)
        self.prev: Stats | None = None
        #: Each instance's nodes when the last step was searched.
        self.prev_nodes: tuple[np.ndarray, np.ndarray] | None = None
        #: state.peers transposed, kept up to date (a move changes the rows
        #: and columns of the nodes it touches only).
        self.peers_t = np.ascontiguousarray(state.peers.T, dtype=np.int64)
        self.costs: list[StepCost] = []
        # Location tags make every slot target-dependent: nothing to cache.
        self.cache = SourceCache(nk, ni) if self.incremental and not state.has_locations else None

    # -- bookkeeping -------------------------------------------------------

    def moved(self, nodes: Collection[int]) -> None:
        """The chosen move was applied; it changed ``nodes``."""
        self.touched = sorted(set(nodes))

    def _kinds(self, ok: np.ndarray) -> np.ndarray:
        """(kinds, instances) mask of the records hbal generates this step."""
        st, o = self.state, self.opts
        p = st.inst["pnode"].astype(np.int64)
        s = st.inst["snode"].astype(np.int64)
        is_target = self.tpos >= 0
        use_sec = (s >= 0) & is_target[np.maximum(s, 0)] & o.instance_moves
        p_drained = st.node["offline"][p] != 0
        internal = ok & (st.mirror == MIRROR_INTERNAL)
        external = ok & (st.mirror == MIRROR_EXTERNAL)
        rest = o.restricted_migration
        full = internal & o.disk_moves & o.instance_moves & ~(rest & ~p_drained)
        return np.stack(
            [
                internal & o.disk_moves,
                full,
                full & use_sec & ~rest,
                full & use_sec,
                external & o.instance_moves,
            ]
        )

    def _drift(self, old: Stats, new: Stats, active: np.ndarray) -> None:
        """Widen the active records' bounds by how far the new sums can move their gains."""
        n = float(new.n)
        if n <= 0:
            return

        def var(st: Stats) -> np.ndarray:
            mean = st.s[STD_COLS] / n
            return np.maximum(st.q[STD_COLS] / n - mean * mean, 0.0)

        drift_update(
            np.ascontiguousarray(active),
            var(old),
            var(new),
            np.abs(new.s[STD_COLS] - old.s[STD_COLS]),
            n,
            self.dmax,
            self.gmax,
            self.umin,
            self.drift,
        )

    # -- scoring -----------------------------------------------------------

    def _full(
        self,
        stats: Stats,
        base: float,
        kind: int,
        recs: np.ndarray,
        pool: list[tuple],
        thr: float = np.inf,
    ) -> float:
        """Score records ``recs`` of ``kind`` on every target; reset their bounds.

        Returns the lowest score found (``thr``: the best so far, see _collect)."""
        move = KINDS[kind]
        mat, dm, gm, um = score_grid(
            self._ctx, int(move), recs, self.targets, cache=self.cache, slot=kind, mode=WRITE
        )
        best = self._collect(pool, mat, recs, move, self.targets, True, thr)
        fold_full(
            mat, dm, gm, um, base, recs, self.targets, self.step, self.top_g[kind],
            self.top_t[kind], self.tail[kind], self.aux[kind], self.drift[kind],
            self.evaluated[kind], self.dmax[kind], self.gmax[kind], self.umin[kind],
        )  # fmt: skip
        return best

    def _columns(
        self, stats: Stats, base: float, kind: int, recs: np.ndarray, cols: np.ndarray
    ) -> None:
        """Score records ``recs`` on the touched targets ``cols``; fold into their bounds."""
        # Not dirty: their nodes are unchanged since _full cached their sources.
        mat, d, g, u = score_grid(
            self._ctx, int(KINDS[kind]), recs, cols, cache=self.cache, slot=kind, mode=READ
        )
        fold_columns(
            mat, d, g, u, base, recs, self.aux[kind], self.drift[kind], self.dmax[kind],
            self.gmax[kind], self.umin[kind],
        )  # fmt: skip

    def _refresh(
        self,
        stats: Stats,
        base: float,
        kind: int,
        recs: np.ndarray,
        p: np.ndarray,
        s: np.ndarray,
        cols: np.ndarray,
    ) -> np.ndarray:
        """Records ``recs`` of ``kind`` stayed on nodes a move changed: refresh
        their cached target-independent part and widen their bounds by its
        change (or score exactly what no bound covers).  Returns the mask of
        those that must be scored in full."""
        assert self.cache is not None
        d_a, d_b, full = refresh_sources(self._ctx, int(KINDS[kind]), recs, self.cache, kind)
        keep = recs[~full]
        source_drift(keep, d_a[~full], d_b[~full], self._ctx.s, self._ctx.n, self.dmax[kind],
                     self.gmax[kind], self.umin[kind], self.drift[kind])  # fmt: skip
        move = KINDS[kind]
        if move in (Move.REPLACE_PRIMARY, Move.REPLACE_AND_FAILOVER) and len(keep):
            # The node that becomes the secondary takes the new primary as a
            # peer: for targets with a peer entry there, its slot is not the
            # generic one the change above describes; those are scored now.
            x = (s if move == Move.REPLACE_PRIMARY else p)[keep]
            peered = self.state.peers[np.ix_(x, self.targets)] != 0
            if len(cols):
                peered[:, self.tpos[cols]] = False  # scored with the touched columns
            for node in np.unique(x[peered.any(axis=1)]):
                rows = x == node
                tcols = self.targets[peered[np.flatnonzero(rows)[0]]]
                self._columns(stats, base, kind, keep[rows], tcols)
        return full

    def _collect(
        self,
        pool: list[tuple],
        mat: np.ndarray,
        recs: np.ndarray,
        move: Move,
        targets: np.ndarray,
        has_target: bool,
        thr: float = np.inf,
    ) -> float:
        """Keep the candidates of ``mat`` (records x targets) that may tie for
        the best; returns their lowest score.  ``thr``: the best score so far
        (it only falls): candidates above its tolerance cannot be kept."""
        if mat.size == 0:
            return np.inf
        m = float(mat.min())
        if not np.isfinite(m) or m > thr + _tol(thr):
            return m
        rows, cols = np.nonzero(mat <= m + _tol(m))
        for r, j in zip(rows.tolist(), cols.tolist(), strict=True):
            i = int(recs[r])
            t = int(targets[j]) if has_target else -1
            # hbal's order: instance, then failover before any target, then
            # target node, then the move kind's position in possibleMoves.
            sub = 1 + j * 6 + _ORDER[move] if has_target else 0
            pool.append((float(mat[r, j]), (i, sub), i, move, t))
        return m

    # -- the step ------------------------------------------------------------

    def best(self, cur_cv: float) -> tuple[float, int, Move, int] | None:
        """hbal's best move (exact score, instance, kind, target or -1), or None.

        ``cur_cv``: the cluster's current exact score; hbal only takes a move
        that scores strictly below it."""
        t0 = time.process_time()
        cost = StepCost()
        st = self.state
        self.step += 1
        for n in self.touched:
            self.touched_at[n] = self.step
        st.node_stack = np.stack([st.node[k] for k in NODE_COLS])
        try:
            return self._best(cur_cv, cost, t0)
        finally:
            st.node_stack = None

    def _best(
        self, cur_cv: float, cost: StepCost, t0: float
    ) -> tuple[float, int, Move, int] | None:
        st = self.state
        stats = cluster_stats(st)
        for n in self.touched:
            self.peers_t[:, n] = st.peers[n, :]
            self.peers_t[n, :] = st.peers[:, n]
        self._ctx = context(st, self.tops, stats, self.opts.ignore_soft_errors, self.peers_t)
        vals = base_values(stats)
        base = float(vals @ WEIGHTS)
        ok = eligible(st, self.opts, self.allowed)
        kinds = self._kinds(ok)
        p = st.inst["pnode"].astype(np.int64)
        s = st.inst["snode"].astype(np.int64)
        if not self.incremental or self.prev is None or self.prev_nodes is None:
            dirty = kinds.copy()
        else:
            touched = np.zeros(len(st.node_names), dtype=bool)
            touched[self.touched] = True
            moved = touched[p] | ((s >= 0) & touched[np.maximum(s, 0)])
            dirty = kinds & moved[None, :]
            # Records whose instance stayed on its nodes (only the nodes'
            # figures changed) keep their bounds, widened by the change of
            # their target-independent part; the moved instance's records
            # are scored in full.
            soft = np.zeros_like(dirty)
            if self.cache is not None:
                stayed = (p == self.prev_nodes[0]) & (s == self.prev_nodes[1])
                soft = dirty & stayed[None, :] & (self.evaluated >= 0)
            dirty &= ~soft
            self._drift(self.prev, stats, kinds & ~dirty)
            cols = np.array([n for n in self.touched if self.tpos[n] >= 0], dtype=np.int64)
            for kind in range(len(KINDS)):
                recs = np.flatnonzero(soft[kind])
                if len(recs):
                    cost.refreshed += len(recs)
                    dirty[kind, recs] = self._refresh(stats, base, kind, recs, p, s, cols)
            if len(cols):
                for kind in range(len(KINDS)):
                    recs = np.flatnonzero(kinds[kind] & ~dirty[kind])
                    per = max(1, CALL_PAIRS // len(cols))
                    for start in range(0, len(recs), per):
                        chunk = recs[start : start + per]
                        self._columns(stats, base, kind, chunk, cols)
                        cost.pairs += len(chunk) * len(cols)
                        cost.column_pairs += len(chunk) * len(cols)
        self.prev = stats
        self.prev_nodes = (p.copy(), s.copy())
        self.touched = []
        pool: list[tuple] = []
        thr = min(cur_cv, base)
        # Failovers (no target): few, scored every step.
        fo = np.flatnonzero(
            ok & (st.mirror == MIRROR_INTERNAL) & (s >= 0)
            & (self.tpos[np.maximum(s, 0)] >= 0) & self.opts.instance_moves
        )  # fmt: skip
        if len(fo):
            none = np.array([-1], dtype=np.int64)
            sc = score_grid(self._ctx, int(Move.FAILOVER), fo, none, skip_own=False)[0]
            thr = min(thr, self._collect(pool, sc, fo, Move.FAILOVER, none, False))
            cost.pairs += len(fo)
        nt = len(self.targets)
        if nt:
            # Bounds do not change within the step (only the best score falls):
            # visit records by increasing bound until one is above the best.
            nrec = kinds.shape[1]
            lb = self._bounds(base, kinds, dirty).ravel()
            # The best score only falls: a record above it now is never visited.
            order = np.flatnonzero(lb <= thr + _tol(thr))
            order = order[np.argsort(lb[order], kind="stable")]
            per = max(1, BATCH_PAIRS // nt)
            call = max(per, CALL_PAIRS // nt)
            # Records that must be rescored first (full batches per kind), then
            # the others in small blocks, so the best score falls quickly and
            # prunes the rest.
            pos = int(np.count_nonzero(np.isneginf(lb[order])))
            cost.dirty = pos
            block = order[:pos]
            while True:
                block = block[lb[block] <= thr + _tol(thr)]
                last = order[min(pos, len(order)) - 1] if pos > 0 else -1
                if len(block) == 0 and last >= 0 and not np.isneginf(lb[last]):
                    break  # sorted: every later bound is higher still
                for kind in range(len(KINDS)):
                    recs = np.sort(block[block // nrec == kind] % nrec)
                    for start in range(0, len(recs), call):
                        chunk = recs[start : start + call]
                        thr = min(thr, self._full(stats, base, kind, chunk, pool, thr))
                        cost.records += len(chunk)
                        cost.pairs += len(chunk) * nt
                if pos >= len(order):
                    break
                block, pos = order[pos : pos + per], pos + per
        result = self._pick(pool, thr, cur_cv)
        cost.seconds = time.process_time() - t0
        self.costs.append(cost)
        return result

    def _bounds(self, base: float, kinds: np.ndarray, dirty: np.ndarray) -> np.ndarray:
        """Lower bound of each record's best score (-inf: must be scored; inf:
        no record or no feasible candidate; an unbounded drift: must rescore)."""
        return kernel_bounds(base, kinds, dirty, self.top_g, self.top_t, self.touched_at,
                             self.evaluated, self.tail, self.aux, self.drift)  # fmt: skip

    def _pick(
        self, pool: list[tuple], thr: float, cur_cv: float
    ) -> tuple[float, int, Move, int] | None:
        if not pool or not np.isfinite(thr):
            return None
        lim = thr + _tol(thr)
        near = sorted((c for c in pool if c[0] <= lim), key=lambda c: c[1])
        if not near:
            return None
        exact = exact_scores(self.state, self.tops, [(c[2], c[3], c[4]) for c in near])
        # compareTables keeps the earlier table unless the later one is strictly better.
        j = int(np.argmin(exact))
        if not exact[j] < cur_cv:
            return None
        c = near[j]
        return float(exact[j]), c[2], c[3], c[4]
