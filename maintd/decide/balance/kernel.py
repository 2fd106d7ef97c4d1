"""Compiled candidate scoring (numba): :func:`score_grid`.

The same arithmetic as :func:`maintd.decide.balance.moves.simulate` followed
by :func:`~maintd.decide.balance.moves.score_outcome`, one candidate at a
time in plain loops instead of NumPy batches: for records (instances) x
target nodes of one move kind, the cluster score after the move (inf where
htools refuses it) and, per record over its feasible candidates, the
figures the incremental search bounds its drift with (largest change of
each deviation component's sum and value, smallest variance after).

Slots that do not depend on the target node (the instance's own nodes,
for most kinds) are computed once per record.  ``tests.test_balance_kernel``
ties the two implementations: on generated clusters (tags, locations,
forthcoming instances, exclusive storage, offline nodes) every score agrees
with the NumPy path to 1e-12 relative.  The NumPy path stays: it applies
the chosen move and scores hbal's exact fold (``exact_scores``).

Compiled once per machine (``cache=True``, in ``__pycache__``); the first
call in a process without a cache pays the compilation (measured and
printed by ``bench/balance.py``).
"""

from __future__ import annotations

import math
import time
from collections import namedtuple

import numpy as np
from numba import njit

from maintd.decide.balance.moves import PeerTops, Stats, base_values, cluster_stats
from maintd.decide.balance.score import (
    INST_COLS,
    MAP_COL,
    METRICS,
    NODE_COLS,
    OFF_COLS,
    STD_COLS,
    WEIGHTS,
    State,
)

# Column positions, fixed here (numba bakes globals in at compile time; the
# assertions keep them in step with score.py).
_NODE = (
    "tmem", "nmem", "imem", "fmem", "xpos", "tdsk", "fdsk", "tcpu", "speed", "ucpu",
    "tsp", "fsp", "instsp", "hisp", "lodsk", "lcpu", "rmem", "failn1", "npri", "nsec",
    "ucpu_l", "umem_l", "udsk_l", "unet_l", "fmemF", "fdskF", "ucpuF", "instspF", "fspF",
    "conf", "locscore", "excl", "offline", "pool_m",
)  # fmt: skip
_INST = (
    "mem", "dsk", "vcpus", "su", "sp", "sp_known", "usesmem", "udisk", "online",
    "secmem", "util_c", "util_m", "util_d", "util_n", "ls", "pnode", "snode",
    "forth", "running",
)  # fmt: skip
assert _NODE == NODE_COLS and _INST == INST_COLS
assert MAP_COL == 18 and len(METRICS) == 20
assert tuple(int(c) for c in STD_COLS) == (0, 1, 3, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16)
assert tuple(int(c) for c in OFF_COLS) == (4, 5)

NCOL = len(_NODE)
(TMEM, NMEM, IMEM, FMEM, XPOS, TDSK, FDSK, TCPU, SPEED, UCPU, TSP, FSP, INSTSP, HISP,
 LODSK, LCPU, RMEM, FAILN1, NPRI, NSEC, UCPU_L, UMEM_L, UDSK_L, UNET_L, FMEMF, FDSKF,
 UCPUF, INSTSPF, FSPF, CONF, LOCSCORE, EXCL, OFFLINE, POOL_M) = range(NCOL)  # fmt: skip
(I_MEM, I_DSK, I_VCPUS, I_SU, I_SP, I_SPK, I_USESMEM, I_UDISK, I_ONLINE, I_SECMEM,
 I_UC, I_UM, I_UD, I_UN, I_LS, I_PNODE, I_SNODE, I_FORTH, I_RUNNING) = range(len(_INST))  # fmt: skip

#: Node columns only real instances change (moves.REAL_COLS).
_REAL = np.array(
    [IMEM, FAILN1, FDSK, FSP, INSTSP, UCPU, UCPU_L, UMEM_L, UDSK_L, UNET_L, NPRI, NSEC,
     LOCSCORE, RMEM], dtype=np.int64,
)  # fmt: skip
_STD = np.array([int(c) for c in STD_COLS], dtype=np.int64)
_W = np.array(WEIGHTS, dtype=np.float64)
#: 0: online sum/std component, 1: offline sum, 2: the map statistic.
_KIND = np.array([1 if c in (4, 5) else (2 if c == MAP_COL else 0) for c in range(20)])
_ISSTD = np.zeros(20, dtype=np.bool_)
_ISSTD[_STD] = True
#: Components the secondary operations can change (see _slot).
_SECDEP = np.zeros(20, dtype=np.bool_)
_SECDEP[[1, 2, 3, 4, 9, 12, 14, 16, 19]] = True
NSTD = len(_STD)

# Move kinds (moves.Move values).
REPLACE_SECONDARY, REPLACE_AND_FAILOVER, REPLACE_PRIMARY = 0, 1, 2
FAILOVER_AND_REPLACE, FAILOVER_TO_ANY, FAILOVER = 3, 4, 5

_jit = njit(cache=True, error_model="numpy", nogil=True)


@_jit
def _load(r, node, k):  # type: ignore[no-untyped-def]
    """r[:] = node[k], without a view (no reference counting)."""
    for c in range(NCOL):
        r[c] = node[k, c]


@_jit
def _copy(dst, src):  # type: ignore[no-untyped-def]
    for c in range(NCOL):
        dst[c] = src[c]


@_jit
def _copy2(dst, src):  # type: ignore[no-untyped-def]
    for c in range(20):
        dst[0, c] = src[0, c]
        dst[1, c] = src[1, c]


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _add_part(acc, part):  # type: ignore[no-untyped-def]
    """acc[:2] += part[:2]: a slot's change of the sums and sums of squares
    computed once per record, added for one candidate (inlined: no call)."""
    for c in range(20):
        acc[0, c] += part[0, c]
        acc[1, c] += part[1, c]


@_jit
def _unalloc(r):  # type: ignore[no-untyped-def]
    return math.trunc(r[TMEM]) - r[NMEM] - r[IMEM] - r[XPOS]


@_jit
def _restore_real(r, r0):  # type: ignore[no-untyped-def]
    for c in _REAL:
        r[c] = r0[c]


# The node operations take the row ``r`` (changed in place), the instance's
# values ``iv`` and scalars only: numba counts references to every array
# argument of a call, which costs more than the arithmetic.


@_jit
def remove_pri(r, iv, ls, dsrd, nconf):  # type: ignore[no-untyped-def]
    """Node.removePri; ``nconf``: the instance's exclusion tags counted twice or more."""
    forth = iv[I_FORTH] != 0
    r0 = r.copy() if forth else r
    mem, dsk, udisk = iv[I_MEM], iv[I_DSK], iv[I_UDISK]
    excl = r[EXCL] != 0
    sp, known = iv[I_SP], iv[I_SPK] != 0
    r[IMEM] = r[IMEM] - mem * iv[I_USESMEM]
    r[FAILN1] = 1.0 if _unalloc(r) <= r[RMEM] else 0.0
    r[FDSK] = r[FDSK] + dsk * udisk
    r[FSP] = (r[FSP] + sp if known else r[FSP]) if excl else 0.0
    r[INSTSP] = 0.0 if excl else r[INSTSP] - iv[I_SU] * udisk
    online = iv[I_ONLINE]
    r[UCPU] = r[UCPU] - iv[I_VCPUS] * online
    r[UCPU_L] = r[UCPU_L] - iv[I_UC]
    r[UMEM_L] = r[UMEM_L] - iv[I_UM]
    r[UDSK_L] = r[UDSK_L] - iv[I_UD]
    r[UNET_L] = r[UNET_L] - iv[I_UN]
    r[NPRI] = r[NPRI] - 1
    r[LOCSCORE] = r[LOCSCORE] - ls - dsrd
    if nconf >= 0:
        r[CONF] = r[CONF] - nconf
    r[FMEMF] = r[FMEMF] + mem
    r[FDSKF] = r[FDSKF] + dsk * udisk
    r[FSPF] = (r[FSPF] + sp if known else r[FSPF]) if excl else 0.0
    r[INSTSPF] = 0.0 if excl else r[INSTSPF] - iv[I_SU] * udisk
    r[UCPUF] = r[UCPUF] - iv[I_VCPUS] * online
    if forth:
        _restore_real(r, r0)


@_jit
def add_pri(r, iv, ls, dsrd, strict, npresent):  # type: ignore[no-untyped-def]
    """Node.addPriEx; returns True where htools fails.  ``npresent``: the
    instance's exclusion tags already on the node (-1: no tags in the cluster)."""
    forth = iv[I_FORTH] != 0
    r0 = r.copy() if forth else r
    mem, dsk = iv[I_MEM], iv[I_DSK]
    udisk = iv[I_UDISK] != 0
    ud = 1.0 if udisk else 0.0
    excl = r[EXCL] != 0
    sp, known = iv[I_SP], iv[I_SPK] != 0
    online = iv[I_ONLINE]
    lcpu = r[LCPU]
    r[IMEM] = r[IMEM] + mem * iv[I_USESMEM]
    new_free = _unalloc(r)
    new_dsk = r[FDSK] - dsk * ud
    new_fsp = (r[FSP] - sp if known else -1.0) if excl else 0.0
    new_isp = 0.0 if excl else r[INSTSP] + iv[I_SU] * ud
    new_failn1 = new_free <= r[RMEM]
    new_ucpu = r[UCPU] + iv[I_VCPUS] * online
    cpu_bad = lcpu >= 0 and lcpu < new_ucpu / r[TCPU]
    fail = new_free <= 0 or (udisk and new_dsk <= 0)
    fail = fail or (strict and udisk and new_dsk < r[LODSK])
    fail = fail or (udisk and excl and new_fsp < 0)
    fail = fail or (strict and udisk and new_isp > r[HISP])
    fail = fail or (strict and new_failn1 and r[FAILN1] == 0)
    fail = fail or (strict and cpu_bad)
    if npresent >= 0:
        fail = fail or (strict and npresent > 0)
        r[CONF] = r[CONF] + npresent
    new_memF = r[FMEMF] - mem
    new_dskF = r[FDSKF] - dsk * ud
    new_fspF = (r[FSPF] - sp if known else -1.0) if excl else 0.0
    new_ispF = 0.0 if excl else r[INSTSPF] + iv[I_SU] * ud
    new_ucpuF = r[UCPUF] + iv[I_VCPUS] * online
    cpuF_bad = lcpu >= 0 and lcpu < new_ucpuF / r[TCPU]
    fbad = new_memF <= 0 or (udisk and new_dskF <= 0) or (udisk and new_dskF < r[LODSK])
    fbad = fbad or (udisk and excl and new_fspF < 0) or (udisk and new_ispF > r[HISP])
    fbad = fbad or cpuF_bad
    fail = fail or (strict and fbad)
    if forth:
        fail = strict and fbad
    r[FAILN1] = 1.0 if new_failn1 else 0.0
    r[FDSK] = new_dsk
    r[FSP] = new_fsp
    r[INSTSP] = new_isp
    r[UCPU] = new_ucpu
    r[UCPU_L] = r[UCPU_L] + iv[I_UC]
    r[UMEM_L] = r[UMEM_L] + iv[I_UM]
    r[UDSK_L] = r[UDSK_L] + iv[I_UD]
    r[UNET_L] = r[UNET_L] + iv[I_UN]
    r[NPRI] = r[NPRI] + 1
    r[LOCSCORE] = r[LOCSCORE] + ls + dsrd
    r[FMEMF], r[FDSKF], r[FSPF] = new_memF, new_dskF, new_fspF
    r[INSTSPF], r[UCPUF] = new_ispF, new_ucpuF
    if forth:
        _restore_real(r, r0)
    return fail


@_jit
def remove_sec(r, iv, old_peem, others):  # type: ignore[no-untyped-def]
    """Node.removeSec; ``old_peem``: the peer entry of the instance's primary,
    ``others``: the largest entry of the other primaries."""
    forth = iv[I_FORTH] != 0
    r0 = r.copy() if forth else r
    dsk, udisk = iv[I_DSK], iv[I_UDISK]
    excl = r[EXCL] != 0
    sp, known = iv[I_SP], iv[I_SPK] != 0
    new_peem = old_peem - iv[I_SECMEM]
    new_rmem = r[RMEM] if old_peem < r[RMEM] else max(others, new_peem)
    r[NSEC] = r[NSEC] - 1
    r[FDSK] = r[FDSK] + dsk * udisk
    r[FSP] = (r[FSP] + sp if known else r[FSP]) if excl else 0.0
    r[INSTSP] = 0.0 if excl else r[INSTSP] - iv[I_SU] * udisk
    r[RMEM] = new_rmem
    r[FAILN1] = 1.0 if _unalloc(r) <= new_rmem else 0.0
    r[UDSK_L] = r[UDSK_L] - iv[I_UD]
    r[FDSKF] = r[FDSKF] + dsk * udisk
    r[FSPF] = (r[FSPF] + sp if known else r[FSPF]) if excl else 0.0
    r[INSTSPF] = 0.0 if excl else r[INSTSPF] - iv[I_SU] * udisk
    if forth:
        _restore_real(r, r0)


@_jit
def add_sec(r, iv, peem, strict, ignore_disks):  # type: ignore[no-untyped-def]
    """Node.addSecExEx; ``peem``: the node's peer entry of the (new) primary."""
    forth = iv[I_FORTH] != 0
    r0 = r.copy() if forth else r
    dsk = iv[I_DSK]
    udisk = iv[I_UDISK] != 0
    ud = 1.0 if udisk else 0.0
    excl = r[EXCL] != 0
    sp, known = iv[I_SP], iv[I_SPK] != 0
    secmem = iv[I_SECMEM]
    new_peem = peem + secmem
    new_rmem = max(r[RMEM], new_peem)
    old_mem = _unalloc(r)
    new_dsk = r[FDSK] - dsk
    new_fsp = (r[FSP] - sp if known else -1.0) if excl else 0.0
    new_isp = 0.0 if excl else r[INSTSP] + iv[I_SU] * ud
    new_failn1 = old_mem <= new_rmem
    fail = (not ignore_disks) and new_dsk <= 0
    fail = fail or (strict and new_dsk < r[LODSK])
    fail = fail or (excl and new_fsp < 0)
    fail = fail or (strict and new_isp > r[HISP])
    fail = fail or (strict and secmem >= old_mem)
    fail = fail or (strict and new_failn1 and r[FAILN1] == 0)
    new_dskF = r[FDSKF] - dsk
    new_fspF = (r[FSPF] - sp if known else -1.0) if excl else 0.0
    new_ispF = 0.0 if excl else r[INSTSPF] + iv[I_SU] * ud
    fbad = new_dskF <= 0 or new_dskF < r[LODSK] or (excl and new_fspF < 0)
    fbad = fbad or new_ispF > r[HISP] or secmem >= r[FMEMF]
    fail = fail or (strict and fbad)
    if forth:
        fail = strict and fbad
    r[NSEC] = r[NSEC] + 1
    r[FDSK], r[FSP], r[INSTSP] = new_dsk, new_fsp, new_isp
    r[RMEM] = new_rmem
    r[FAILN1] = 1.0 if new_failn1 else 0.0
    r[UDSK_L] = r[UDSK_L] + iv[I_UD]
    r[FDSKF], r[FSPF], r[INSTSPF] = new_dskF, new_fspF, new_ispF
    if forth:
        _restore_real(r, r0)
    return fail


@_jit
def _pdsk(excl, fsp, tsp, fdsk, tdsk):  # type: ignore[no-untyped-def]
    if excl != 0:
        return 1.0 if tsp == 0 else fsp / tsp
    return 1.0 if tdsk == 0 else fdsk / tdsk


@_jit
def _slot(r, acc, mt, node, on, off, sec_only):  # type: ignore[no-untyped-def]
    """Add node ``node``'s change of components (new row ``r``; its metrics
    as score.metric_columns) to acc[0] (sums) and acc[1] (sums of squares).

    ``sec_only``: only secondary operations (removeSec/addSecExEx) changed
    the row, so the components of the columns they leave alone are skipped
    (their change is exactly 0 either way)."""
    if not (on or off):
        return
    m = acc[2]
    tmem = r[TMEM]
    m[1] = _pdsk(r[EXCL], r[FSP], r[TSP], r[FDSK], r[TDSK])
    m[2] = r[NSEC] + r[NPRI] if r[FAILN1] != 0 else 0.0
    prem = r[RMEM] / tmem
    m[3] = prem
    m[4] = r[NSEC] + r[NPRI]
    m[9] = r[UDSK_L]
    m[12] = r[INSTSP] / r[HISP]
    m[14] = _pdsk(r[EXCL], r[FSPF], r[TSP], r[FDSKF], r[TDSK])
    m[16] = r[INSTSPF] / r[HISP]
    m[19] = prem
    if not sec_only:
        m[0] = (math.trunc(tmem) - r[NMEM] - r[IMEM] - r[XPOS]) / tmem
        m[5] = r[NPRI]
        m[6] = r[UCPU] / r[TCPU] / r[SPEED]
        m[7] = r[UCPU_L]
        m[8] = r[UMEM_L] / r[POOL_M]
        m[10] = r[UNET_L]
        m[11] = r[CONF]
        m[13] = r[FMEMF] / tmem
        m[15] = r[UCPUF] / r[TCPU] / r[SPEED]
        m[17] = r[LOCSCORE]
    for c in range(20):
        k = _KIND[c]
        if k == 2 or (k == 1 and not off) or (k == 0 and not on):
            continue
        if sec_only and not _SECDEP[c]:
            continue
        old = mt[node, c]
        new = m[c]
        if new == old:
            continue
        acc[0, c] += new - old
        if _ISSTD[c]:
            acc[1, c] += new * new - old * old


@_jit
def _count(excl, ptags, i, node, adj, above):  # type: ignore[no-untyped-def]
    """Exclusion tags of instance ``i`` counted more than ``above`` times on ``node``
    (-1 when the cluster has none)."""
    ne = excl.shape[1]
    if ne == 0:
        return -1
    k = 0
    for e in range(ne):
        if excl[i, e] and ptags[node, e] + adj > above:
            k += 1
    return k


@_jit
def _common(loc, a, b):  # type: ignore[no-untyped-def]
    k = 0
    for j in range(loc.shape[1]):
        if loc[a, j] and loc[b, j]:
            k += 1
    return float(k)


@_jit
def _map_delta(excl, loc, gmap, on, i, old_p, new_p):  # type: ignore[no-untyped-def]
    if old_p == new_p:
        return 0.0
    ne, nl = excl.shape[1], loc.shape[1]
    lost = 0
    gained = 0
    dsum = 0
    for li in range(nl):
        la = on[old_p] and loc[old_p, li]
        lb = on[new_p] and loc[new_p, li]
        for e in range(ne):
            if not excl[i, e]:
                continue
            g = gmap[li, e]
            rem = 1 if la else 0
            if rem and g == 1:
                lost += 1
            if lb and g - rem == 0:
                gained += 1
            dsum += (1 if lb else 0) - rem
    return float(dsum - (gained - lost))


@_jit
def _grid(  # type: ignore[no-untyped-def]
    kind, recs, targets, skip_own, node, inst, peers, peers_t, top1, arg1, top2, mt, on, off,
    s_sum, q_sum, n, map_value, std_now, excl, ptags, loc, desired, desired_n, gmap,
    mig_ok, force, mat, dm, gm, um, cmode, c_acc, c_pre, c_fail, c_gfail, d_a, d_b, d_full,
):  # fmt: skip
    nl = loc.shape[1]
    # peers[a, b] == peers_t[b, a]: read the one whose row is fixed for the
    # inner (target) loop when there are many targets, else the one whose
    # row is the target (the records vary): fewer cache misses either way.
    many = targets.shape[0] > 32
    has_mig = mig_ok.shape[0] > 0
    has_map = excl.shape[1] > 0 and nl > 0
    # Source slots can be shared by a record's targets only without
    # location tags (which make them target-dependent); failovers have none.
    share = nl == 0 and kind != FAILOVER
    acc0 = np.zeros((3, 20))  # the record's shared slots
    acc = np.zeros((3, 20))
    acc_s = np.zeros((3, 20))  # the secondary's slot (REPLACE_AND_FAILOVER)
    iv = np.zeros(len(_INST))
    rp = np.zeros(NCOL)
    rs = np.zeros(NCOL)
    rt = np.zeros(NCOL)
    src_s = np.zeros(NCOL)
    # REPLACE_PRIMARY / REPLACE_AND_FAILOVER: the source node that becomes the
    # instance's secondary takes the new primary as a peer.  Its peer entry
    # for most targets is 0, so that slot (row, failure, change of the
    # components) is the same for all of them: computed once per record.
    gen = np.zeros(NCOL)
    acc_g = np.zeros((3, 20))
    pre = np.zeros(NCOL)  # a slot's target-independent operations, done once per record
    dv = np.zeros(NSTD)
    uv = np.zeros(NSTD)
    gv = np.zeros(NSTD)
    # Each deviation component's variance and value with no change: a
    # candidate that leaves a component's sums alone gets exactly these
    # (the same arithmetic as below with a zero change), without the sqrt.
    var0 = np.zeros(20)
    val0 = np.zeros(20)
    for c in range(20):
        if _ISSTD[c]:
            mean = s_sum[c] / n
            var = q_sum[c] / n - mean * mean
            if var < 0.0:
                var = 0.0
            var0[c] = var
            val0[c] = math.sqrt(var)
    for r in range(recs.shape[0]):
        i = recs[r]
        for c in range(len(_INST)):
            iv[c] = inst[i, c]
        p = int(iv[I_PNODE])
        s = int(iv[I_SNODE])
        ls_old = iv[I_LS]
        p_off = node[p, OFFLINE] != 0
        s_off = s >= 0 and node[s, OFFLINE] != 0
        dsrd_p = desired_n[i]
        dsrd_s = desired_n[i]
        for j in range(nl):
            if desired[i, j]:
                if loc[p, j]:
                    dsrd_p -= 1
                if s >= 0 and loc[s, j]:
                    dsrd_s -= 1
        # peer entries and 'others' of the instance's own nodes (not needed
        # when the shared slots come from the cache: a cache miss saved)
        pe_sp = 0.0
        oth_s = 0.0
        if s >= 0 and not (share and cmode == 2 and kind != FAILOVER):
            pe_sp = float(peers[s, p])
            oth_s = top2[s] if arg1[s] == p else top1[s]
        src_fail = False
        if share and cmode == 2:
            # The record's shared slots as cached when it was last scored in
            # full or refreshed (its instance's nodes have not changed since);
            # only those its kind uses.
            for c in range(20):
                acc0[0, c] = c_acc[0, i, 0, c]
                acc0[1, c] = c_acc[0, i, 1, c]
            if kind == REPLACE_AND_FAILOVER:
                for c in range(20):
                    acc_s[0, c] = c_acc[1, i, 0, c]
                    acc_s[1, c] = c_acc[1, i, 1, c]
            if kind == REPLACE_AND_FAILOVER or kind == REPLACE_PRIMARY:
                for c in range(20):
                    acc_g[0, c] = c_acc[2, i, 0, c]
                    acc_g[1, c] = c_acc[2, i, 1, c]
                for c in range(NCOL):
                    pre[c] = c_pre[i, c]
            src_fail = c_fail[i]
        elif share:
            for c in range(20):
                acc0[0, c] = 0.0
                acc0[1, c] = 0.0
            if kind == FAILOVER_TO_ANY or kind == REPLACE_PRIMARY:
                _load(rp, node, p)
                remove_pri(rp, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                _slot(rp, acc0, mt, p, on[p], off[p], False)
                if kind == REPLACE_PRIMARY:
                    # The secondary's operations before the one that names the target.
                    strict = not (p_off or force)
                    _load(pre, node, s)
                    remove_sec(pre, iv, pe_sp, oth_s)
                    src_fail = add_pri(pre, iv, 0.0, dsrd_s, strict, _count(excl, ptags, i, s, 0, 0))
                    remove_pri(pre, iv, 0.0, dsrd_s, _count(excl, ptags, i, s, 1, 1))
            elif kind == REPLACE_SECONDARY:
                _load(rp, node, p)
                remove_pri(rp, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                src_fail = add_pri(rp, iv, 0.0, dsrd_p, False, _count(excl, ptags, i, p, -1, 0))
                _slot(rp, acc0, mt, p, on[p], off[p], False)
                _load(rs, node, s)
                remove_sec(rs, iv, pe_sp, oth_s)
                _slot(rs, acc0, mt, s, on[s], off[s], True)
            elif kind == REPLACE_AND_FAILOVER:
                # The primary's operation before the one that names the target.
                _load(pre, node, p)
                remove_pri(pre, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                # The secondary's slot comes second: its change is added per target.
                _load(src_s, node, s)
                remove_sec(src_s, iv, pe_sp, oth_s)
                acc_s[:2] = 0.0
                _slot(src_s, acc_s, mt, s, on[s], off[s], True)
            elif kind == FAILOVER_AND_REPLACE:
                _load(rp, node, p)
                remove_pri(rp, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                _slot(rp, acc0, mt, p, on[p], off[p], False)
                _load(rs, node, s)
                remove_sec(rs, iv, pe_sp, oth_s)
                strict = not (p_off or force)
                src_fail = add_pri(rs, iv, 0.0, dsrd_s, strict, _count(excl, ptags, i, s, 0, 0))
                _slot(rs, acc0, mt, s, on[s], off[s], False)
        # The generic slot (peer entry 0) of the node that becomes the secondary.
        g_fail = False
        if share and cmode == 2:
            g_fail = c_gfail[i]
        elif share and (kind == REPLACE_PRIMARY or kind == REPLACE_AND_FAILOVER):
            g_node = s if kind == REPLACE_PRIMARY else p
            g_strict = not ((p_off if kind == REPLACE_PRIMARY else s_off) or force)
            _copy(gen, pre)
            g_fail = add_sec(gen, iv, 0.0, g_strict, False)
            acc_g[:2] = 0.0
            _slot(gen, acc_g, mt, g_node, on[g_node], off[g_node], False)
        if share and cmode == 3:
            # What the record's target-independent part adds to every
            # candidate's sums now, minus what it added when cached: the
            # search bounds the change of the record's scores with it.
            d_full[r] = (c_fail[i] and not src_fail) or (c_gfail[i] and not g_fail)
            for c in range(20):
                d_a[r, c] = (acc0[0, c] + acc_s[0, c] + acc_g[0, c]) - (
                    c_acc[0, i, 0, c] + c_acc[1, i, 0, c] + c_acc[2, i, 0, c])
                d_b[r, c] = (acc0[1, c] + acc_s[1, c] + acc_g[1, c]) - (
                    c_acc[0, i, 1, c] + c_acc[1, i, 1, c] + c_acc[2, i, 1, c])
        if share and (cmode == 1 or cmode == 3):
            for c in range(20):
                c_acc[0, i, 0, c] = acc0[0, c]
                c_acc[0, i, 1, c] = acc0[1, c]
                c_acc[1, i, 0, c] = acc_s[0, c]
                c_acc[1, i, 1, c] = acc_s[1, c]
                c_acc[2, i, 0, c] = acc_g[0, c]
                c_acc[2, i, 1, c] = acc_g[1, c]
            for c in range(NCOL):
                c_pre[i, c] = pre[c]
            c_fail[i] = src_fail
            c_gfail[i] = g_fail
        for j in range(NSTD):
            dm[r, j] = 0.0
            gm[r, j] = 0.0
            um[r, j] = np.inf
        for k in range(targets.shape[0]):
            t = targets[k]
            if skip_own and (t == p or t == s):
                mat[r, k] = np.inf
                continue
            _copy2(acc, acc0)
            fail = src_fail
            use_gen = False
            if t >= 0:
                dsrd_t = desired_n[i]
                for j in range(nl):
                    if desired[i, j] and loc[t, j]:
                        dsrd_t -= 1
            else:
                dsrd_t = 0.0
            # The node operations (and htools' checks) first; the score only
            # for feasible candidates.
            if kind == FAILOVER:
                strict = not (p_off or force)
                fail = has_mig and not mig_ok[p, s]
                _load(rs, node, s)
                remove_sec(rs, iv, pe_sp, oth_s)
                fail |= add_pri(rs, iv, ls_old, dsrd_s, strict, _count(excl, ptags, i, s, 0, 0))
                _load(rp, node, p)
                remove_pri(rp, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                fail |= add_sec(rp, iv, float(peers[p, s]), strict, p_off)
                new_p = s
            elif kind == FAILOVER_TO_ANY:
                strict = not (p_off or force)
                fail |= has_mig and not mig_ok[p, t]
                _load(rt, node, t)
                fail |= add_pri(rt, iv, ls_old, dsrd_t, strict, _count(excl, ptags, i, t, 0, 0))
                if not share:
                    _load(rp, node, p)
                    remove_pri(rp, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                new_p = t
            elif kind == REPLACE_PRIMARY:
                strict = not (p_off or force)
                ls_new = _common(loc, t, s)
                fail |= has_mig and (not mig_ok[p, s] or not mig_ok[s, t])
                pe = float(peers[s, t] if many else peers_t[t, s])
                use_gen = share and pe == 0
                if use_gen:
                    fail |= g_fail
                elif share:
                    _copy(rs, pre)
                else:
                    _load(rs, node, s)
                    remove_sec(rs, iv, pe_sp, oth_s)
                    fail |= add_pri(rs, iv, ls_new, dsrd_s, strict, _count(excl, ptags, i, s, 0, 0))
                    remove_pri(rs, iv, ls_new, dsrd_s, _count(excl, ptags, i, s, 1, 1))
                _load(rt, node, t)
                fail |= add_pri(rt, iv, ls_new, dsrd_t, strict, _count(excl, ptags, i, t, 0, 0))
                if not use_gen:
                    fail |= add_sec(rs, iv, pe, strict, False)
                if not share:
                    _load(rp, node, p)
                    remove_pri(rp, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                new_p = t
            elif kind == REPLACE_SECONDARY:
                strict = not (s_off or force)
                _load(rt, node, t)
                pe = float(peers_t[p, t] if many else peers[t, p])
                fail |= add_sec(rt, iv, pe, strict, False)
                if not share:
                    ls_new = _common(loc, p, t)
                    _load(rp, node, p)
                    remove_pri(rp, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                    fail |= add_pri(rp, iv, ls_new, dsrd_p, False, _count(excl, ptags, i, p, -1, 0))
                    _load(rs, node, s)
                    remove_sec(rs, iv, pe_sp, oth_s)
                new_p = p
            elif kind == REPLACE_AND_FAILOVER:
                strict_s = not (s_off or force)
                ls_new = _common(loc, t, p)
                fail |= has_mig and not mig_ok[p, t]
                _load(rt, node, t)
                fail |= add_pri(rt, iv, ls_new, dsrd_t, not force, _count(excl, ptags, i, t, 0, 0))
                pe = float(peers[p, t] if many else peers_t[t, p])
                use_gen = share and pe == 0
                if use_gen:
                    fail |= g_fail
                else:
                    if share:
                        _copy(rp, pre)
                    else:
                        _load(rp, node, p)
                        remove_pri(rp, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                    fail |= add_sec(rp, iv, pe, strict_s, False)
                if not share:
                    _load(rs, node, s)
                    remove_sec(rs, iv, pe_sp, oth_s)
                new_p = t
            else:  # FAILOVER_AND_REPLACE
                strict = not (p_off or force)
                fail |= has_mig and not mig_ok[p, s]
                if not share:
                    ls_new = _common(loc, s, t)
                    _load(rs, node, s)
                    remove_sec(rs, iv, pe_sp, oth_s)
                    fail |= add_pri(rs, iv, ls_new, dsrd_s, strict, _count(excl, ptags, i, s, 0, 0))
                _load(rt, node, t)
                pe = float(peers_t[s, t] if many else peers[t, s])
                fail |= add_sec(rt, iv, pe, strict, False)
                if not share:
                    _load(rp, node, p)
                    remove_pri(rp, iv, ls_old, dsrd_p, _count(excl, ptags, i, p, 0, 1))
                new_p = s
            if fail:
                mat[r, k] = np.inf
                continue
            # The slots' changes, in simulate's slot order (primary, secondary,
            # target); the shared ones are already in acc.
            if kind == FAILOVER:
                _slot(rp, acc, mt, p, on[p], off[p], False)
                _slot(rs, acc, mt, s, on[s], off[s], False)
            elif kind == REPLACE_AND_FAILOVER:
                if use_gen:
                    _add_part(acc, acc_g)
                else:
                    _slot(rp, acc, mt, p, on[p], off[p], False)
                if share:
                    # x + 0.0 == x: the same sums as adding the slot here.
                    _add_part(acc, acc_s)
                else:
                    _slot(rs, acc, mt, s, on[s], off[s], True)
                _slot(rt, acc, mt, t, on[t], off[t], False)
            else:
                if not share:
                    _slot(rp, acc, mt, p, on[p], off[p], False)
                    if kind != FAILOVER_TO_ANY:
                        _slot(rs, acc, mt, s, on[s], off[s], kind == REPLACE_SECONDARY)
                elif kind == REPLACE_PRIMARY:
                    if use_gen:
                        _add_part(acc, acc_g)
                    else:
                        _slot(rs, acc, mt, s, on[s], off[s], False)
                _slot(
                    rt,
                    acc,
                    mt,
                    t,
                    on[t],
                    off[t],
                    kind == REPLACE_SECONDARY or kind == FAILOVER_AND_REPLACE,
                )
            # The score (score_outcome's formulas) and the deviation figures.
            sc = 0.0
            j = 0
            for c in range(20):
                if c == MAP_COL:
                    v = map_value
                    if has_map:
                        v += _map_delta(excl, loc, gmap, on, i, p, new_p)
                elif _ISSTD[c]:
                    if acc[0, c] == 0.0 and acc[1, c] == 0.0:
                        var = var0[c]
                        v = val0[c]
                    else:
                        tot = s_sum[c] + acc[0, c]
                        mean = tot / n
                        var = (q_sum[c] + acc[1, c]) / n - mean * mean
                        if var < 0.0:
                            var = 0.0
                        v = math.sqrt(var)
                    uv[j] = var
                    dv[j] = acc[0, c]
                    gv[j] = v
                    j += 1
                else:
                    v = s_sum[c] + acc[0, c]
                sc += v * _W[c]
            if math.isnan(sc):
                mat[r, k] = np.inf
                continue
            mat[r, k] = sc
            for j in range(NSTD):
                a = abs(dv[j])
                if a > dm[r, j]:
                    dm[r, j] = a
                g = abs(gv[j] - std_now[j])
                if g > gm[r, j]:
                    gm[r, j] = g
                if uv[j] < um[r, j]:
                    um[r, j] = uv[j]


@_jit
def drift_update(active, v0, v1, ds, n, dmax, gmax, umin, drift):  # type: ignore[no-untyped-def]
    """Widen the ``active`` records' bounds (search.Search._drift) in place.

    ``v0``/``v1``: each deviation component's variance before/after the
    cluster's last change, ``ds`` the change of its sum; dmax/gmax/umin/drift
    are the records' figures ((kinds, instances, NSTD) and (kinds, instances)).
    The bound ``x`` on the change of each component's gain is argued in
    search.py's docstring.
    """
    nk, ni = active.shape
    w = _W[_STD]
    dvs = np.abs(v1 - v0)
    rrs = np.sqrt(v0) + np.sqrt(v1)
    droots = np.abs(np.sqrt(v1) - np.sqrt(v0))
    for k in range(nk):
        for i in range(ni):
            if not active[k, i]:
                continue
            tot = 0.0
            for j in range(NSTD):
                dv, rr, droot = dvs[j], rrs[j], droots[j]
                dmx, gmx, umn = dmax[k, i, j], gmax[k, i, j], umin[k, i, j]
                h = 2.0 * ds[j] * dmx / (n * n)
                if dv == 0 and h == 0:
                    # the component's variance did not move for any candidate
                    gmax[k, i, j] = gmx + 1e-15
                    tot += 1e-15 * w[j]
                    continue
                u1 = umn - dv - h
                p = math.sqrt(max(umn, 0.0)) + math.sqrt(max(u1, 0.0))
                if dmx == 0 and gmx == 0 and dv == 0:
                    x = 0.0
                else:
                    # First order, always valid: |sqrt a - sqrt b| <= sqrt|a - b|.
                    e = dv + h
                    x = math.sqrt(e)
                    if p > 0 and e / p < x:
                        x = e / p
                    x += droot
                    # Second order (the changes of sqrt u and sqrt v cancel).
                    if p > 0 and (dv == 0 or dv < p * rr):
                        if dv == 0:
                            x2 = h / p
                        else:
                            x2 = (2.0 * dv * gmx / rr + h) / (p - dv / rr)
                        if x2 < x:
                            x = x2
                x = x * (1.0 + 1e-6) + 1e-15
                gmax[k, i, j] = gmx + x
                umin[k, i, j] = u1
                tot += x * w[j]
            drift[k, i] += tot


@_jit
def fold_full(  # type: ignore[no-untyped-def]
    mat, dm, gm, um, base, recs, targets, step, top_g, top_t, tail, aux, drift, evaluated,
    dmax, gmax, umin,
):  # fmt: skip
    """search.Search._full's bookkeeping: reset the bounds of records ``recs``
    (one kind's arrays) from their scores on every target ``mat``: the K best
    gains (ascending) with their targets, the K-th as the tail bound."""
    kk = top_g.shape[1]
    for r in range(recs.shape[0]):
        i = recs[r]
        for q in range(kk):
            top_g[i, q] = np.inf
            top_t[i, q] = targets[0]
        for j in range(targets.shape[0]):
            g = mat[r, j] - base
            if not g < top_g[i, kk - 1]:
                continue
            q = kk - 1
            while q > 0 and g < top_g[i, q - 1]:
                top_g[i, q] = top_g[i, q - 1]
                top_t[i, q] = top_t[i, q - 1]
                q -= 1
            top_g[i, q] = g
            top_t[i, q] = targets[j]
        tail[i] = top_g[i, kk - 1]
        aux[i] = np.inf
        drift[i] = 0.0
        evaluated[i] = step
        for j in range(NSTD):
            dmax[i, j] = dm[r, j]
            gmax[i, j] = gm[r, j]
            umin[i, j] = um[r, j]


@_jit
def fold_columns(mat, dm, gm, um, base, recs, aux, drift, dmax, gmax, umin):  # type: ignore[no-untyped-def]
    """search.Search._columns' bookkeeping: fold the records' scores on the
    touched targets (``mat``) and their figures into their bounds (one kind's
    arrays).  Rows without a feasible candidate (inf, 0, 0, inf) change nothing."""
    for r in range(recs.shape[0]):
        i = recs[r]
        lo = np.inf
        for j in range(mat.shape[1]):
            if mat[r, j] < lo:
                lo = mat[r, j]
        lo = lo - base + drift[i]
        if lo < aux[i]:
            aux[i] = lo
        for j in range(NSTD):
            if dm[r, j] > dmax[i, j]:
                dmax[i, j] = dm[r, j]
            if gm[r, j] > gmax[i, j]:
                gmax[i, j] = gm[r, j]
            if um[r, j] < umin[i, j]:
                umin[i, j] = um[r, j]


@_jit
def bounds(base, kinds, dirty, top_g, top_t, touched_at, evaluated, tail, aux, drift):  # type: ignore[no-untyped-def]
    """search.Search._bounds: each record's lower bound of its best score
    (-inf: must be scored; inf: no record or no feasible candidate)."""
    nk, ni = kinds.shape
    kk = top_g.shape[2]
    lb = np.empty((nk, ni))
    for k in range(nk):
        for i in range(ni):
            if not kinds[k, i]:
                lb[k, i] = np.inf
                continue
            if dirty[k, i]:
                lb[k, i] = -np.inf
                continue
            # the best of the K kept gains whose target is untouched since
            gain = np.inf
            for q in range(kk):
                if touched_at[top_t[k, i, q]] <= evaluated[k, i] and top_g[k, i, q] < gain:
                    gain = top_g[k, i, q]
            if tail[k, i] < gain:
                gain = tail[k, i]
            if aux[k, i] < gain:
                gain = aux[k, i]
            d = drift[k, i]
            if gain == np.inf:
                lb[k, i] = np.inf
            elif d == np.inf or d == -np.inf:
                lb[k, i] = -np.inf
            else:
                lb[k, i] = base + gain - d
    return lb


Ctx = namedtuple(
    "Ctx",
    "node inst peers peers_t top1 arg1 top2 mt on off s q n map_value std_now "
    "excl ptags loc desired desired_n gmap mig_ok force",
)


def context(
    state: State, tops: PeerTops, stats: Stats, force: bool, peers_t: np.ndarray | None = None
) -> Ctx:
    """The kernel's view of ``state`` for one step (plain contiguous arrays).

    ``peers_t``: ``state.peers`` transposed (contiguous), when the caller
    keeps one up to date; made here otherwise."""
    st = state
    c = np.ascontiguousarray
    node = st.node_stack if st.node_stack is not None else np.stack([st.node[k] for k in NODE_COLS])
    vals = base_values(stats)
    mig = st.mig_ok if st.mig_ok is not None else np.zeros((0, 0), dtype=np.bool_)
    return Ctx(
        node=c(node.T, dtype=np.float64),
        inst=c(np.stack([st.inst[k] for k in INST_COLS], axis=1), dtype=np.float64),
        peers=c(st.peers, dtype=np.int64),
        peers_t=c(st.peers.T, dtype=np.int64) if peers_t is None else peers_t,
        top1=c(tops.top1, dtype=np.float64),
        arg1=c(tops.arg1, dtype=np.int64),
        top2=c(tops.top2, dtype=np.float64),
        mt=c(st.metrics, dtype=np.float64),
        on=c(st.in_group & (st.node["offline"] == 0)),
        off=c(st.in_group & (st.node["offline"] != 0)),
        s=c(stats.s, dtype=np.float64),
        q=c(stats.q, dtype=np.float64),
        n=float(stats.n),
        map_value=float(stats.map_value),
        std_now=c(vals[STD_COLS], dtype=np.float64),
        excl=c(st.excl, dtype=np.bool_),
        ptags=c(st.ptags, dtype=np.int64),
        loc=c(st.loc, dtype=np.bool_),
        desired=c(st.desired, dtype=np.bool_),
        desired_n=c(st.desired_n, dtype=np.float64),
        gmap=c(st.gmap, dtype=np.int64),
        mig_ok=c(mig, dtype=np.bool_),
        force=bool(force),
    )


class SourceCache:
    """Per move kind and instance: the target-independent part of its
    candidates (the shared slots' changes, a slot's operations before the
    target's, their failure), kept between steps.

    Valid for a record as long as its instance's nodes are untouched: the
    search writes it whenever it scores a record in full (``mode=WRITE``) or
    refreshes it after a move touched the instance's nodes (``mode=REFRESH``,
    :func:`refresh_sources`), and reads it for the touched-column scoring
    (``mode=READ``).  ``acc``, per kind: the shared slots' sums and sums of
    squares per instance, then the secondary's slot (replace-and-failover),
    then the generic slot of the node that becomes the secondary
    (replace-primary and replace-and-failover), each part contiguous (the
    column pass reads only the parts its kind uses); ``fail``/``gfail``:
    the shared and the generic slot's failure.
    """

    def __init__(self, kinds: int, instances: int) -> None:
        self.acc = np.zeros((kinds, 3, instances, 2, 20))
        self.pre = np.zeros((kinds, instances, NCOL))
        self.fail = np.zeros((kinds, instances), dtype=np.bool_)
        self.gfail = np.zeros((kinds, instances), dtype=np.bool_)


WRITE, READ, REFRESH = 1, 2, 3
_NO_CACHE = SourceCache(1, 1)
_NO_DELTA = (np.zeros((0, 20)), np.zeros((0, 20)), np.zeros(0, dtype=np.bool_))


def _call(
    ctx: Ctx, kind: int, recs: np.ndarray, targets: np.ndarray, skip_own: bool,
    outs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], cache: SourceCache | None,
    slot: int, mode: int,
    deltas: tuple[np.ndarray, np.ndarray, np.ndarray] = _NO_DELTA,
) -> None:  # fmt: skip
    c = cache or _NO_CACHE
    k = slot if cache is not None else 0
    _grid(
        int(kind),
        np.ascontiguousarray(recs, dtype=np.int64),
        np.ascontiguousarray(targets, dtype=np.int64),
        bool(skip_own),
        *ctx,
        *outs,
        mode if cache is not None else 0,
        c.acc[k],
        c.pre[k],
        c.fail[k],
        c.gfail[k],
        *deltas,
    )


def refresh_sources(
    ctx: Ctx, kind: int, recs: np.ndarray, cache: SourceCache, slot: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recompute the cached target-independent part of records ``recs``
    (their instance's nodes changed, the instance did not move).

    Returns, per record and component, the change of what that part adds to
    every candidate's sum (``d_a``) and sum of squares (``d_b``) -- exact for
    the candidates whose slots are all target-independent or generic -- and
    whether a part that failed before no longer fails (``full``: the record
    has candidates no bound covers and must be scored in full)."""
    nr = len(recs)
    deltas = (np.zeros((nr, 20)), np.zeros((nr, 20)), np.zeros(nr, dtype=np.bool_))
    if nr:
        outs = (np.empty((nr, 0)), np.empty((nr, NSTD)), np.empty((nr, NSTD)),
                np.empty((nr, NSTD)))  # fmt: skip
        _call(ctx, kind, recs, np.zeros(0, dtype=np.int64), True, outs, cache, slot,
              REFRESH, deltas)  # fmt: skip
    return deltas


@_jit
def source_drift(recs, d_a, d_b, s_sum, n, dmax, gmax, umin, drift):  # type: ignore[no-untyped-def]
    """Widen the bounds of records ``recs`` (one kind's arrays) by how far
    their candidates' scores can move when their target-independent part
    changes by ``d_a``/``d_b`` (see search.py's docstring): a sum component
    moves every candidate by exactly its ``d_a``; a deviation component's
    variance by at most ``h = |d_b| / n + (2 (|S| + dmax) |d_a| + d_a^2) / n^2``."""
    for r in range(recs.shape[0]):
        i = recs[r]
        tot = 0.0
        j = 0
        for c in range(20):
            if c == MAP_COL:
                continue
            da = abs(d_a[r, c])
            if not _ISSTD[c]:
                tot += da * abs(_W[c])
                continue
            h = abs(d_b[r, c]) / n + (2.0 * (abs(s_sum[c]) + dmax[i, j]) * da + da * da) / (n * n)
            if h > 0.0:
                umn = umin[i, j]
                u1 = umn - h
                p = math.sqrt(max(umn, 0.0)) + math.sqrt(max(u1, 0.0))
                x = math.sqrt(h)
                if p > 0 and h / p < x:
                    x = h / p
                x = x * (1.0 + 1e-6) + 1e-15
                gmax[i, j] += x
                umin[i, j] = u1
                dmax[i, j] += da
                tot += x * abs(_W[c])
            j += 1
        drift[i] += tot * (1.0 + 1e-6)


def score_grid(
    ctx: Ctx,
    kind: int,
    recs: np.ndarray,
    targets: np.ndarray,
    skip_own: bool = True,
    cache: SourceCache | None = None,
    slot: int = 0,
    mode: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores of moving each instance of ``recs`` with ``kind`` to each of ``targets``.

    Returns ``mat`` (records x targets; inf where infeasible, or where the
    target is one of the instance's nodes when ``skip_own``) and per record
    over its feasible candidates, per deviation component: the largest
    change of the sum (``dm``), the largest change of the value (``gm``) and
    the smallest variance after (``um``; inf when nothing is feasible).
    A failover (no target) takes ``targets=[-1]``, ``skip_own=False``.
    With ``cache`` (entry ``slot``) the records' target-independent part is
    stored (``mode=WRITE``) or taken from it (``mode=READ``).
    """
    nr, nt = len(recs), len(targets)
    mat = np.empty((nr, nt))
    dm = np.empty((nr, NSTD))
    gm = np.empty((nr, NSTD))
    um = np.empty((nr, NSTD))
    if nr and nt:
        _call(ctx, kind, recs, targets, skip_own, (mat, dm, gm, um), cache, slot, mode)
    return mat, dm, gm, um


_warm: list[float] = []


def warm_up() -> float:
    """Compile the kernel (or load it from numba's cache) once per process.

    Returns the CPU seconds that took (0.0 after the first call): ~20 s the
    first time on a machine, ~0.4 s from the cache.
    """
    if _warm:
        return 0.0
    t0 = time.process_time()
    from maintd.decide.balance.gen import generate_cluster
    from maintd.decide.balance.score import build_state

    st = build_state(generate_cluster(3, 4, seed=1))
    stats = cluster_stats(st)
    ctx = context(st, PeerTops.of(st.peers), stats, False)
    ni, nn = len(st.inst_names), len(st.node_names)
    recs, targets = np.arange(ni), np.arange(nn)
    for kind in range(6):
        mat, dm, gm, um = score_grid(ctx, kind, recs, targets, kind != FAILOVER)
    f1, fk = np.zeros(ni), np.zeros((ni, NSTD))
    fold_full(mat, dm, gm, um, 0.0, recs, targets, 1, np.zeros((ni, 4)),
              np.zeros((ni, 4), dtype=np.int64), f1, f1.copy(), f1.copy(),
              np.zeros(ni, dtype=np.int64), fk, fk.copy(), fk.copy())  # fmt: skip
    fold_columns(mat, dm, gm, um, 0.0, recs, f1, f1.copy(), fk, fk.copy(), fk.copy())
    cache = SourceCache(1, ni)
    score_grid(ctx, REPLACE_SECONDARY, recs, targets, True, cache, 0, WRITE)
    score_grid(ctx, REPLACE_SECONDARY, recs, targets, True, cache, 0, READ)
    d_a, d_b, _full = refresh_sources(ctx, REPLACE_SECONDARY, recs, cache, 0)
    source_drift(recs, d_a, d_b, ctx.s, ctx.n, fk, fk.copy(), fk.copy(), f1)
    one = np.ones((1, 1), dtype=np.bool_)
    bounds(0.0, one, ~one, np.zeros((1, 1, 4)), np.zeros((1, 1, 4), dtype=np.int64),
           np.zeros(1, dtype=np.int64), np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1)),
           np.zeros((1, 1)), np.zeros((1, 1)))  # fmt: skip
    z = np.zeros(NSTD)
    drift_update(one, z, z, z, 1.0, np.zeros((1, 1, NSTD)), np.zeros((1, 1, NSTD)),
                 np.zeros((1, 1, NSTD)), np.zeros((1, 1)))  # fmt: skip
    _warm.append(time.process_time() - t0)
    return _warm[0]
