"""Instance moves (htools ``Cluster/Moves.hs``), evaluated for many candidates at once.

A move changes two or three nodes ("slots").  Each slot replays htools'
``Node`` operations (``removePri``, ``addPriEx``, ``removeSec``,
``addSecExEx``) on a *row*: a dict of node columns holding one value per
candidate (instance, target node) pair, so a whole batch of candidates is
one set of NumPy operations.  A failed hard or soft check (memory, disk,
N+1, vCPU ratio, spindles, exclusion tags, migration tags) marks the pair
infeasible, exactly where htools returns ``Bad``.

The same code applies the chosen move to the :class:`State` (a batch of one).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

import attrs
import numpy as np

from maintd.decide.balance.score import (
    MAP_COL,
    METRIC_DEPS,
    NMETRICS,
    NODE_COLS,
    OFF_COLS,
    STD_COLS,
    WEIGHTS,
    State,
    fold_cv,
    map_value,
    metric_columns,
    node_metrics,
    weighted_cv,
)

Row = dict[str, np.ndarray]


class Move(enum.IntEnum):
    """hbal's ``IMove`` kinds (the order is hbal's candidate order per target)."""

    REPLACE_SECONDARY = 0  # r:ns
    REPLACE_AND_FAILOVER = 1  # r:np f
    REPLACE_PRIMARY = 2  # f r:np f
    FAILOVER_AND_REPLACE = 3  # f r:ns
    FAILOVER_TO_ANY = 4  # fa:np
    FAILOVER = 5  # f

    @property
    def short(self) -> str:
        return _SHORT[self]

    @property
    def moves_disks(self) -> bool:
        return self in _DISK_MOVES


_SHORT = {
    Move.FAILOVER: "failover",
    Move.FAILOVER_TO_ANY: "failover-to-any",
    Move.REPLACE_PRIMARY: "replace-primary",
    Move.REPLACE_SECONDARY: "replace-secondary",
    Move.REPLACE_AND_FAILOVER: "replace-and-failover",
    Move.FAILOVER_AND_REPLACE: "failover-and-replace",
}
_DISK_MOVES = frozenset(
    {
        Move.REPLACE_PRIMARY,
        Move.REPLACE_SECONDARY,
        Move.REPLACE_AND_FAILOVER,
        Move.FAILOVER_AND_REPLACE,
    }
)


@attrs.frozen
class Stats:
    """Cluster-wide sums the candidate scores are computed from."""

    s: np.ndarray  # (20,) sums over online group nodes (offline sums in OFF_COLS)
    q: np.ndarray  # (20,) sums of squares over online group nodes
    n: int
    map_value: float
    #: (20, N) per-node metrics, transposed (contiguous per metric).
    mt: np.ndarray | None = None


def cluster_stats(state: State) -> Stats:
    online = state.in_group & (state.node["offline"] == 0)
    offline = state.in_group & (state.node["offline"] != 0)
    m = np.where(online[:, None], state.metrics, 0.0)
    s = m.sum(axis=0)
    q = (m * m).sum(axis=0)
    off = np.where(offline[:, None], state.metrics, 0.0).sum(axis=0)
    s[OFF_COLS] = off[OFF_COLS]
    return Stats(
        s=s,
        q=q,
        n=int(online.sum()),
        map_value=map_value(state.gmap),
        mt=np.ascontiguousarray(state.metrics.T),
    )


@attrs.define
class PeerTops:
    """Per node: the largest peer entry, its primary node, and the second largest."""

    top1: np.ndarray
    arg1: np.ndarray
    top2: np.ndarray

    @classmethod
    def of(cls, peers: np.ndarray) -> PeerTops:
        n = peers.shape[0]
        if n == 0:
            z = np.zeros(0)
            return cls(z, z.astype(np.int64), z)
        arg1 = peers.argmax(axis=1)
        top1 = peers[np.arange(n), arg1].astype(float)
        if n > 1:
            top2 = np.partition(peers, n - 2, axis=1)[:, n - 2].astype(float)
        else:
            top2 = np.zeros(n)
        return cls(top1, arg1, top2)

    def update(self, peers: np.ndarray, rows: list[int]) -> None:
        n = peers.shape[1]
        for r in rows:
            row = peers[r]
            a = int(row.argmax())
            self.arg1[r] = a
            self.top1[r] = float(row[a])
            self.top2[r] = float(np.partition(row, n - 2)[n - 2]) if n > 1 else 0.0


@attrs.define
class Batch:
    """Context of one candidate batch: pair instance indices and node helpers."""

    state: State
    tops: PeerTops
    ii: np.ndarray  # (K,) instance index per pair
    force: bool
    _cols: dict[str, np.ndarray] = attrs.field(factory=dict, init=False, repr=False)

    def inst(self, col: str) -> np.ndarray:
        """The instance column ``col`` per pair (gathered once per batch)."""
        got = self._cols.get(col)
        if got is None:
            got = self._cols[col] = self.state.inst[col][self.ii]
        return got


def gather(state: State, nodes: np.ndarray) -> Row:
    stack = state.node_stack
    if stack is None:
        row = {k: state.node[k][nodes] for k in NODE_COLS}
    else:  # one take for all columns; each row entry is a contiguous view
        row = dict(zip(NODE_COLS, stack.take(nodes, axis=1), strict=True))
    row["idx"] = nodes
    return row


def unallocated_memory(r: Row) -> np.ndarray:
    """A node's free memory as htools counts it for N+1 (Node.unallocatedMem)."""
    return np.trunc(r["tmem"]) - r["nmem"] - r["imem"] - r["xpos"]


def _dsrd(b: Batch, nodes: np.ndarray) -> np.ndarray:
    st = b.state
    dn = st.desired_n[b.ii]
    if not st.has_locations:
        return dn
    return dn - np.sum(st.desired[b.ii] & st.loc[nodes], axis=1)


def _ptags_cur(b: Batch, nodes: np.ndarray, adj: int) -> np.ndarray:
    pt = b.state.ptags[nodes]
    if adj:
        pt = pt + adj * b.state.excl[b.ii]
    return pt


#: Node columns only real (not forthcoming) instances change.
REAL_COLS = (
    "imem", "failn1", "fdsk", "fsp", "instsp", "ucpu", "ucpu_l", "umem_l", "udsk_l",
    "unet_l", "npri", "nsec", "locscore", "rmem",
)  # fmt: skip


def _forth_only(b: Batch, old: Row, new: Row) -> Row:
    """For forthcoming instances keep the real columns of ``old`` (htools' *Forth paths)."""
    fm = b.inst("forth") != 0
    if not fm.any():
        return new
    for col in REAL_COLS:
        new[col] = np.where(fm, old[col], new[col])
    return new


def remove_pri(b: Batch, r: Row, ls: np.ndarray, adj: int = 0) -> Row:
    """Node.removePri."""
    r0, r = r, dict(r)
    mem, dsk, udisk = b.inst("mem"), b.inst("dsk"), b.inst("udisk")
    excl = r["excl"] != 0
    sp, known = b.inst("sp"), b.inst("sp_known") != 0
    r["imem"] = r["imem"] - mem * b.inst("usesmem")
    r["failn1"] = (unallocated_memory(r) <= r["rmem"]).astype(float)
    r["fdsk"] = r["fdsk"] + dsk * udisk
    r["fsp"] = np.where(excl, np.where(known, r["fsp"] + sp, r["fsp"]), 0.0)
    r["instsp"] = np.where(excl, 0.0, r["instsp"] - b.inst("su") * udisk)
    online = b.inst("online")
    r["ucpu"] = r["ucpu"] - b.inst("vcpus") * online
    r["ucpu_l"] = r["ucpu_l"] - b.inst("util_c")
    r["umem_l"] = r["umem_l"] - b.inst("util_m")
    r["udsk_l"] = r["udsk_l"] - b.inst("util_d")
    r["unet_l"] = r["unet_l"] - b.inst("util_n")
    r["npri"] = r["npri"] - 1
    r["locscore"] = r["locscore"] - ls - _dsrd(b, r["idx"])
    if b.state.has_tags:
        pt = _ptags_cur(b, r["idx"], adj)
        r["conf"] = r["conf"] - np.sum(b.state.excl[b.ii] & (pt > 1), axis=1)
    r["fmemF"] = r["fmemF"] + mem
    r["fdskF"] = r["fdskF"] + dsk * udisk
    r["fspF"] = np.where(excl, np.where(known, r["fspF"] + sp, r["fspF"]), 0.0)
    r["instspF"] = np.where(excl, 0.0, r["instspF"] - b.inst("su") * udisk)
    r["ucpuF"] = r["ucpuF"] - b.inst("vcpus") * online
    return _forth_only(b, r0, r)


def add_pri(
    b: Batch, r: Row, ls: np.ndarray, strict: np.ndarray, adj: int = 0
) -> tuple[Row, np.ndarray]:
    """Node.addPriEx; returns the new row and the failure mask."""
    r0, r = r, dict(r)
    mem, dsk, udisk = b.inst("mem"), b.inst("dsk"), b.inst("udisk") != 0
    excl = r["excl"] != 0
    sp, known = b.inst("sp"), b.inst("sp_known") != 0
    online = b.inst("online")
    lcpu = r["lcpu"]
    r["imem"] = r["imem"] + mem * b.inst("usesmem")
    new_free = unallocated_memory(r)
    new_dsk = r["fdsk"] - dsk * udisk
    new_fsp = np.where(excl, np.where(known, r["fsp"] - sp, -1.0), 0.0)
    new_isp = np.where(excl, 0.0, r["instsp"] + b.inst("su") * udisk)
    new_failn1 = new_free <= r["rmem"]
    new_ucpu = r["ucpu"] + b.inst("vcpus") * online
    with np.errstate(divide="ignore", invalid="ignore"):
        cpu_bad = (lcpu >= 0) & (lcpu < new_ucpu / r["tcpu"])
    fail = (new_free <= 0) | (udisk & (new_dsk <= 0))
    fail |= strict & udisk & (new_dsk < r["lodsk"])
    fail |= udisk & excl & (new_fsp < 0)
    fail |= strict & udisk & (new_isp > r["hisp"])
    fail |= strict & new_failn1 & (r["failn1"] == 0)
    fail |= strict & cpu_bad
    if b.state.has_tags:
        pt = _ptags_cur(b, r["idx"], adj)
        present = b.state.excl[b.ii] & (pt > 0)
        fail |= strict & present.any(axis=1)
        r["conf"] = r["conf"] + present.sum(axis=1)
    # forthcoming limits (checked after the normal ones when strict)
    new_memF = r["fmemF"] - mem
    new_dskF = r["fdskF"] - dsk * udisk
    new_fspF = np.where(excl, np.where(known, r["fspF"] - sp, -1.0), 0.0)
    new_ispF = np.where(excl, 0.0, r["instspF"] + b.inst("su") * udisk)
    new_ucpuF = r["ucpuF"] + b.inst("vcpus") * online
    with np.errstate(divide="ignore", invalid="ignore"):
        cpuF_bad = (lcpu >= 0) & (lcpu < new_ucpuF / r["tcpu"])
    fbad = (new_memF <= 0) | (udisk & (new_dskF <= 0)) | (udisk & (new_dskF < r["lodsk"]))
    fbad |= (udisk & excl & (new_fspF < 0)) | (udisk & (new_ispF > r["hisp"])) | cpuF_bad
    fail |= strict & fbad
    fm = b.inst("forth") != 0
    if fm.any():
        fail = np.where(fm, strict & fbad, fail)
    r["failn1"] = new_failn1.astype(float)
    r["fdsk"] = new_dsk
    r["fsp"] = new_fsp
    r["instsp"] = new_isp
    r["ucpu"] = new_ucpu
    r["ucpu_l"] = r["ucpu_l"] + b.inst("util_c")
    r["umem_l"] = r["umem_l"] + b.inst("util_m")
    r["udsk_l"] = r["udsk_l"] + b.inst("util_d")
    r["unet_l"] = r["unet_l"] + b.inst("util_n")
    r["npri"] = r["npri"] + 1
    r["locscore"] = r["locscore"] + ls + _dsrd(b, r["idx"])
    r["fmemF"], r["fdskF"], r["fspF"] = new_memF, new_dskF, new_fspF
    r["instspF"], r["ucpuF"] = new_ispF, new_ucpuF
    return _forth_only(b, r0, r), fail


def remove_sec(b: Batch, r: Row, pnode: np.ndarray) -> Row:
    """Node.removeSec; ``pnode`` is the instance's primary (the peer entry)."""
    r0, r = r, dict(r)
    dsk, udisk = b.inst("dsk"), b.inst("udisk")
    excl = r["excl"] != 0
    sp, known = b.inst("sp"), b.inst("sp_known") != 0
    nodes = r["idx"]
    old_peem = b.state.peers[nodes, pnode].astype(float)
    new_peem = old_peem - b.inst("secmem")
    tops = b.tops
    others = np.where(tops.arg1[nodes] == pnode, tops.top2[nodes], tops.top1[nodes])
    new_rmem = np.where(old_peem < r["rmem"], r["rmem"], np.maximum(others, new_peem))
    r["nsec"] = r["nsec"] - 1
    r["fdsk"] = r["fdsk"] + dsk * udisk
    r["fsp"] = np.where(excl, np.where(known, r["fsp"] + sp, r["fsp"]), 0.0)
    r["instsp"] = np.where(excl, 0.0, r["instsp"] - b.inst("su") * udisk)
    r["rmem"] = new_rmem
    r["failn1"] = (unallocated_memory(r) <= new_rmem).astype(float)
    r["udsk_l"] = r["udsk_l"] - b.inst("util_d")
    r["fdskF"] = r["fdskF"] + dsk * udisk
    r["fspF"] = np.where(excl, np.where(known, r["fspF"] + sp, r["fspF"]), 0.0)
    r["instspF"] = np.where(excl, 0.0, r["instspF"] - b.inst("su") * udisk)
    return _forth_only(b, r0, r)


def add_sec(
    b: Batch,
    r: Row,
    pdx: np.ndarray,
    strict: np.ndarray,
    ignore_disks: np.ndarray | bool = False,
) -> tuple[Row, np.ndarray]:
    """Node.addSecExEx for DRBD instances; ``pdx`` is the (new) primary."""
    r0, r = r, dict(r)
    dsk, udisk = b.inst("dsk"), b.inst("udisk") != 0
    excl = r["excl"] != 0
    sp, known = b.inst("sp"), b.inst("sp_known") != 0
    secmem = b.inst("secmem")
    new_peem = b.state.peers[r["idx"], pdx] + secmem
    new_rmem = np.maximum(r["rmem"], new_peem)
    old_mem = unallocated_memory(r)
    new_dsk = r["fdsk"] - dsk
    new_fsp = np.where(excl, np.where(known, r["fsp"] - sp, -1.0), 0.0)
    new_isp = np.where(excl, 0.0, r["instsp"] + b.inst("su") * udisk)
    new_failn1 = old_mem <= new_rmem
    fail = ~np.asarray(ignore_disks) & (new_dsk <= 0)
    fail = fail | (strict & (new_dsk < r["lodsk"]))
    fail |= excl & (new_fsp < 0)
    fail |= strict & (new_isp > r["hisp"])
    fail |= strict & (secmem >= old_mem)
    fail |= strict & new_failn1 & (r["failn1"] == 0)
    new_dskF = r["fdskF"] - dsk
    new_fspF = np.where(excl, np.where(known, r["fspF"] - sp, -1.0), 0.0)
    new_ispF = np.where(excl, 0.0, r["instspF"] + b.inst("su") * udisk)
    fbad = (new_dskF <= 0) | (new_dskF < r["lodsk"]) | (excl & (new_fspF < 0))
    fbad |= (new_ispF > r["hisp"]) | (secmem >= r["fmemF"])
    fail |= strict & fbad
    fm = b.inst("forth") != 0
    if fm.any():
        fail = np.where(fm, strict & fbad, fail)
    r["nsec"] = r["nsec"] + 1
    r["fdsk"], r["fsp"], r["instsp"] = new_dsk, new_fsp, new_isp
    r["rmem"] = new_rmem
    r["failn1"] = new_failn1.astype(float)
    r["udsk_l"] = r["udsk_l"] + b.inst("util_d")
    r["fdskF"], r["fspF"], r["instspF"] = new_dskF, new_fspF, new_ispF
    return _forth_only(b, r0, r), fail


@attrs.frozen
class Outcome:
    """Slots (node index arrays and their new rows), failure mask, new placement."""

    slots: list[tuple[np.ndarray, Row, np.ndarray | None]]
    fail: np.ndarray
    new_p: np.ndarray
    new_s: np.ndarray
    new_ls: np.ndarray
    #: The rows as gathered before the move, by id of their ``idx`` array: a
    #: node column that is the same object in a slot's row is unchanged.
    bases: dict[int, Row] = attrs.field(factory=dict)


def _mig(state: State, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if state.mig_ok is None:
        return np.zeros(len(a), dtype=bool)
    return ~state.mig_ok[a, b]


def _ls(state: State, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not state.has_locations:
        return np.zeros(len(a))
    return np.sum(state.loc[a] & state.loc[b], axis=1).astype(float)


def simulate(
    b: Batch,
    move: Move,
    tt: np.ndarray,
    bu: Batch | None = None,
    inv: np.ndarray | None = None,
) -> Outcome:
    """Apply ``move`` (to targets ``tt``) to every pair of the batch, on copies.

    With ``bu`` (the batch's distinct instances) and ``inv`` (pair -> row of
    ``bu``), slots that do not depend on the target node are computed once
    per instance and expanded (only when the cluster has no location tags,
    which would make them target-dependent).
    """
    st = b.state
    p = st.inst["pnode"][b.ii].astype(np.int64)
    s = st.inst["snode"][b.ii].astype(np.int64)
    ls_old = st.inst["ls"][b.ii]
    p_off = st.node["offline"][p] != 0
    force = b.force
    ind = bu is not None and inv is not None and not st.has_locations
    if ind:
        assert bu is not None and inv is not None
        ub, ex = bu, inv
        pu = st.inst["pnode"][bu.ii].astype(np.int64)
        su = st.inst["snode"][bu.ii].astype(np.int64)
        lsu = st.inst["ls"][bu.ii]
    else:
        ub, ex, pu, su, lsu = b, None, p, s, ls_old

    def expand(x: np.ndarray) -> np.ndarray:
        return x if ex is None else x[ex]

    bases: dict[int, Row] = {}

    def gat(nodes: np.ndarray) -> Row:
        row = gather(st, nodes)
        bases[id(nodes)] = row
        return row

    if move == Move.FAILOVER:
        strict = ~(p_off | force)
        fail = _mig(st, p, s)
        rs = remove_sec(b, gat(s), p)
        rs, f1 = add_pri(b, rs, ls_old, strict)
        rp = remove_pri(b, gat(p), ls_old)
        rp, f2 = add_sec(b, rp, s, strict, ignore_disks=p_off)
        return Outcome([(p, rp, None), (s, rs, None)], fail | f1 | f2, s, p, ls_old, bases)
    if move == Move.FAILOVER_TO_ANY:
        strict = ~(p_off | force)
        fail = _mig(st, p, tt)
        rt, f1 = add_pri(b, gat(tt), ls_old, strict)
        rp = remove_pri(ub, gat(pu), lsu)
        return Outcome([(pu, rp, ex), (tt, rt, None)], fail | f1, tt, s, ls_old, bases)
    if move == Move.REPLACE_PRIMARY:
        strict = ~(p_off | force)
        ls_new = _ls(st, tt, s)
        fail = _mig(st, p, s) | _mig(st, s, tt)
        rs = remove_sec(b, gat(s), p)
        rs, f1 = add_pri(b, rs, ls_new, strict)
        rs = remove_pri(b, rs, ls_new, adj=1)
        rt, f2 = add_pri(b, gat(tt), ls_new, strict)
        rs, f3 = add_sec(b, rs, tt, strict)
        rp = remove_pri(ub, gat(pu), lsu)
        slots = [(pu, rp, ex), (s, rs, None), (tt, rt, None)]
        return Outcome(slots, fail | f1 | f2 | f3, tt, s, ls_new, bases)
    if move == Move.REPLACE_SECONDARY:
        s_off = st.node["offline"][s] != 0
        strict = ~(s_off | force)
        ls_new = _ls(st, p, tt)
        rt, f1 = add_sec(b, gat(tt), p, strict)
        ls_new_u = np.zeros(len(pu)) if ind else ls_new
        rp = remove_pri(ub, gat(pu), lsu)
        rp, f2 = add_pri(ub, rp, ls_new_u, np.zeros(len(pu), dtype=bool), adj=-1)
        rs = remove_sec(ub, gat(su), pu)
        slots = [(pu, rp, ex), (su, rs, ex), (tt, rt, None)]
        return Outcome(slots, f1 | expand(f2), p, tt, ls_new, bases)
    if move == Move.REPLACE_AND_FAILOVER:
        s_off = st.node["offline"][s] != 0
        strict_s = ~(s_off | force)
        ls_new = _ls(st, tt, p)
        fail = _mig(st, p, tt)
        rt, f1 = add_pri(b, gat(tt), ls_new, np.full(len(p), not force))
        rp = remove_pri(b, gat(p), ls_old)
        rp, f2 = add_sec(b, rp, tt, strict_s)
        rs = remove_sec(ub, gat(su), pu)
        slots = [(p, rp, None), (su, rs, ex), (tt, rt, None)]
        return Outcome(slots, fail | f1 | f2, tt, p, ls_new, bases)
    if move == Move.FAILOVER_AND_REPLACE:
        strict = ~(p_off | force)
        ls_new = _ls(st, s, tt)
        fail = _mig(st, p, s)
        strict_u = ~((st.node["offline"][pu] != 0) | force)
        ls_new_u = np.zeros(len(pu)) if ind else ls_new
        rs = remove_sec(ub, gat(su), pu)
        rs, f1 = add_pri(ub, rs, ls_new_u, strict_u)
        rt, f2 = add_sec(b, gat(tt), s, strict)
        rp = remove_pri(ub, gat(pu), lsu)
        slots = [(pu, rp, ex), (su, rs, ex), (tt, rt, None)]
        return Outcome(slots, fail | expand(f1) | f2, s, tt, ls_new, bases)
    raise ValueError(f"unknown move {move!r}")


def _map_delta(b: Batch, old_p: np.ndarray, new_p: np.ndarray) -> np.ndarray:
    """Change of the location-exclusion map statistic when the primary moves."""
    st = b.state
    k = len(old_p)
    if not (st.has_tags and st.has_locations):
        return np.zeros(k)
    on = st.in_group & (st.node["offline"] == 0)
    x = st.excl[b.ii].astype(np.int64)  # (K, E)
    la = st.loc[old_p] & on[old_p][:, None]  # (K, L)
    lb = st.loc[new_p] & on[new_p][:, None]
    g = st.gmap[None, :, :]  # (1, L, E)
    removed = la[:, :, None] * x[:, None, :]  # (K, L, E)
    g_after = g - removed
    lost = np.sum(removed & (g == 1), axis=(1, 2))
    added = lb[:, :, None] * x[:, None, :]
    gained = np.sum(added & (g_after == 0), axis=(1, 2))
    dsum = added.sum(axis=(1, 2)) - removed.sum(axis=(1, 2))
    same = old_p == new_p
    return np.where(same, 0.0, dsum - (gained - lost))


_OFF_SET = frozenset(int(c) for c in OFF_COLS)
_STD_SET = frozenset(int(c) for c in STD_COLS)
_STD_POS = {int(c): j for j, c in enumerate(STD_COLS)}


def base_values(stats: Stats) -> np.ndarray:
    """The twenty component values of the unmoved cluster, from ``stats``
    (the same incremental formulas as :func:`score_outcome`)."""
    n = stats.n
    vals = stats.s.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = stats.s[STD_COLS] / n
        var = np.maximum(stats.q[STD_COLS] / n - mean * mean, 0.0)
    vals[STD_COLS] = np.sqrt(var)
    vals[MAP_COL] = stats.map_value
    return vals


def score_outcome(
    b: Batch, stats: Stats, out: Outcome, detail: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Cluster score after each simulated move (inf where infeasible).

    With ``detail`` (a dict), it also receives, per candidate and standard
    deviation component (``STD_COLS`` order), the change of the component's
    sum (``"d"``) and the variance after the move (``"u"``): what the
    incremental search bounds its score drift with.

    Works one metric column at a time on contiguous 1-D arrays (the per-node
    metrics transposed once per step in :class:`Stats`), which avoids the
    (pairs x 20) temporaries; sums are taken in the same order as a
    row-wise computation, so the scores are bit for bit the same.
    """
    st = b.state
    k = len(b.ii)
    on_all = st.in_group & (st.node["offline"] == 0)
    off_all = st.in_group & (st.node["offline"] != 0)
    mt = stats.mt if stats.mt is not None else np.ascontiguousarray(st.metrics.T)
    ds: list[np.ndarray | None] = [None] * NMETRICS
    dq: list[np.ndarray | None] = [None] * NMETRICS
    # Leading slots that depend on the instance only are summed per instance
    # and expanded to pairs once ((a + b)[ex] is (a[ex] + b[ex]) exactly).
    level: np.ndarray | None = None  # expansion pending for ds/dq, if any

    def flush() -> None:
        nonlocal level
        if level is not None:
            ex = level
            for acc in (ds, dq):
                for c, v in enumerate(acc):
                    if v is not None:
                        acc[c] = v[ex]
            level = None

    first = True
    for nodes, row, expand in out.slots:
        if expand is not None and (first or level is expand):
            level = expand
            expand = None
        else:
            flush()
        first = False
        on = on_all[nodes]
        off = off_all[nodes]
        all_on = bool(on.all())
        # A component whose node columns are all still the gathered arrays
        # keeps its old value: its delta is exactly zero, skip it.
        base = out.bases.get(id(row["idx"]))
        changed = (
            {k for k, v in row.items() if base.get(k) is not v} if base is not None else set(row)
        )
        wanted = [
            deps is not None and not (all_on and c in _OFF_SET) and not changed.isdisjoint(deps)
            for c, deps in enumerate(METRIC_DEPS)
        ]
        newc = metric_columns(row, wanted)
        for c in range(NMETRICS):
            new = newc[c]
            if new is None:
                continue
            is_off = c in _OFF_SET
            old = mt[c][nodes]
            delta = new - old
            dsq = new * new - old * old if c in _STD_SET else None
            if not all_on:
                mask = off if is_off else on
                delta = np.where(mask, delta, 0.0)
                if dsq is not None:
                    dsq = np.where(mask, dsq, 0.0)
            if expand is not None:
                delta = delta[expand]
                if dsq is not None:
                    dsq = dsq[expand]
            # Accumulators are always fresh arrays of their own: add in place.
            prev = ds[c]
            if prev is None:
                ds[c] = delta
            else:
                prev += delta
            if dsq is not None:
                prevq = dq[c]
                if prevq is None:
                    dq[c] = dsq
                else:
                    prevq += dsq
    flush()
    n = stats.n
    vals = np.empty((k, NMETRICS))
    if detail is not None:
        detail["d"] = np.zeros((k, len(STD_COLS)))
        detail["u"] = np.zeros((k, len(STD_COLS)))
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(NMETRICS):
            if c == MAP_COL:
                continue
            d = ds[c]
            sc = d + stats.s[c] if d is not None else np.full(k, stats.s[c])
            if c in _STD_SET:
                mean = sc / n
                dqc = dq[c]
                qc = dqc + stats.q[c] if dqc is not None else np.full(k, stats.q[c])
                var = qc / n - mean * mean
                np.maximum(var, 0.0, out=var)
                if detail is not None:
                    j = _STD_POS[c]
                    detail["u"][:, j] = var
                    if d is not None:
                        detail["d"][:, j] = d
                vals[:, c] = np.sqrt(var, out=var)
            else:
                vals[:, c] = sc
    if st.has_tags and st.has_locations:
        p_old = st.inst["pnode"][b.ii].astype(np.int64)
        vals[:, MAP_COL] = stats.map_value + _map_delta(b, p_old, out.new_p)
    else:
        vals[:, MAP_COL] = stats.map_value
    score = vals @ WEIGHTS
    return np.where(out.fail | np.isnan(score), np.inf, score)


def _simulate_one(state: State, tops: PeerTops, inst: int, move: Move, target: int) -> Outcome:
    """One move as a batch of one (soft errors ignored, like ``Moves.move``)."""
    b = Batch(state=state, tops=tops, ii=np.array([inst]), force=False)
    return simulate(b, move, np.array([target if target >= 0 else 0]))


def _gmap_delta(state: State, inst: int, p_old: int, new_p: int) -> np.ndarray | None:
    """Change of the (location, exclusion) pair counts when ``inst``'s primary moves."""
    st = state
    if not (st.has_tags and st.has_locations) or new_p == p_old or st.inst["forth"][inst]:
        return None
    on = st.in_group & (st.node["offline"] == 0)
    x = st.excl[inst].astype(np.int64)
    delta = np.zeros_like(st.gmap)
    if on[p_old]:
        delta -= np.outer(st.loc[p_old], x)
    if on[new_p]:
        delta += np.outer(st.loc[new_p], x)
    return delta


def exact_scores(
    state: State, tops: PeerTops, cands: Sequence[tuple[int, Move, int]]
) -> np.ndarray:
    """hbal's own score (``compCV`` of the moved cluster, bit for bit) of each move.

    The batch scores are incremental sums, exact only up to rounding; hbal
    compares the scores it folds from scratch, so equal-looking candidates
    are decided here, on the same floating-point values hbal compares.
    """
    online = state.in_group & (state.node["offline"] == 0)
    offline = state.in_group & (state.node["offline"] != 0)
    pos_on = np.cumsum(online) - 1
    pos_off = np.cumsum(offline) - 1
    base_on, base_off = state.metrics[online], state.metrics[offline]
    out = np.empty(len(cands))
    for start in range(0, len(cands), 32):
        chunk = cands[start : start + 32]
        m_on = np.repeat(base_on[None], len(chunk), axis=0)
        m_off = np.repeat(base_off[None], len(chunk), axis=0)
        maps = np.empty(len(chunk))
        for k, (inst, move, target) in enumerate(chunk):
            res = _simulate_one(state, tops, inst, move, target)
            for nodes, row, _expand in res.slots:
                n = int(nodes[0])
                metrics = node_metrics({c: row[c] for c in NODE_COLS})[0]
                if online[n]:
                    m_on[k, pos_on[n]] = metrics
                elif offline[n]:
                    m_off[k, pos_off[n]] = metrics
            gd = _gmap_delta(state, inst, int(state.inst["pnode"][inst]), int(res.new_p[0]))
            maps[k] = map_value(state.gmap if gd is None else state.gmap + gd)
        out[start : start + len(chunk)] = weighted_cv(fold_cv(m_on, m_off, maps))
    return out


def apply_move(state: State, tops: PeerTops, inst: int, move: Move, target: int) -> None:
    """Apply one move to ``state`` in place (ignoring soft errors, like ``Moves.move``)."""
    state.node_stack = None  # the node columns change below
    out = _simulate_one(state, tops, inst, move, target)
    st = state
    p_old = int(st.inst["pnode"][inst])
    s_old = int(st.inst["snode"][inst])
    new_p, new_s = int(out.new_p[0]), int(out.new_s[0])
    forth = bool(st.inst["forth"][inst])
    gd = _gmap_delta(st, inst, p_old, new_p)
    if gd is not None:
        st.gmap += gd
    if st.has_tags and new_p != p_old:
        st.ptags[p_old] -= st.excl[inst]
        st.ptags[new_p] += st.excl[inst]
    changed: list[int] = []
    for nodes, row, _expand in out.slots:
        k = int(nodes[0])
        for col in NODE_COLS:
            st.node[col][k] = row[col][0]
        changed.append(k)
    secmem = int(st.inst["secmem"][inst])
    if s_old >= 0 and not forth:
        st.peers[s_old, p_old] -= secmem
        st.peers[new_s, new_p] += secmem
        tops.update(st.peers, sorted({s_old, new_s}))
    st.inst["pnode"][inst] = new_p
    st.inst["snode"][inst] = new_s if s_old >= 0 else -1
    st.inst["ls"][inst] = out.new_ls[0]
    st.refresh(changed)


CandidateFn = Callable[[Batch, Move, np.ndarray], np.ndarray]
