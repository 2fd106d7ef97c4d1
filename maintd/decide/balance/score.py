"""hbal's cluster model and score (Ganeti 3.0 ``Cluster/Metrics.hs``), on NumPy arrays.

:func:`build_state` turns a :class:`maintd.cluster.model.Cluster` into a
:class:`State`: one array per node figure, one per instance figure, the
DRBD peer matrix (secondary node x primary node -> memory to reserve), and
dense tag matrices for exclusion tags, location tags and migration tags.
Every node figure follows htools' ``Node`` record as hbal loads it
(``Loader.mergeData`` then ``updateMissing``); :func:`node_metrics` gives
the twenty per-node components of the detailed score and :func:`compute_cv`
the score itself, summed exactly like ``compCV``.

Forthcoming instances count where htools counts them (the ``*_forth``
metrics and exclusion tags) and move like htools moves them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from maintd.cluster.model import Cluster
from maintd.decide.balance.text import DEFAULT_IPOLICY

EXCL_PREFIX = "htools:iextags:"
LOCATION_PREFIX = "htools:nlocation:"
DESIRED_LOCATION_PREFIX = "htools:desiredlocation:"
MIGRATION_PREFIX = "htools:migration:"
ALLOW_MIGRATION_PREFIX = "htools:allowmigration:"

#: (weight, name, kind) of each score component, in hbal's order.
#: kind: "std" (population standard deviation over online nodes), "sum"
#: (sum over online nodes), "off" (sum over offline nodes), "map" (location
#: exclusion map statistic).
METRICS: tuple[tuple[float, str, str], ...] = (
    (0.5, "free_mem_cv", "std"),
    (0.5, "free_disk_cv", "std"),
    (1.0, "n1_cnt", "sum"),
    (1.0, "reserved_mem_cv", "std"),
    (4.0, "offline_all_cnt", "off"),
    (16.0, "offline_pri_cnt", "off"),
    (0.5, "vcpu_ratio_cv", "std"),
    (1.0, "cpu_load_cv", "std"),
    (1.0, "mem_load_cv", "std"),
    (1.0, "disk_load_cv", "std"),
    (1.0, "net_load_cv", "std"),
    (2.0, "pri_tags_score", "sum"),
    (0.5, "spindles_cv", "std"),
    (0.5, "free_mem_cv_forth", "std"),
    (0.5, "free_disk_cv_forth", "std"),
    (0.5, "vcpu_ratio_cv_forth", "std"),
    (0.5, "spindles_cv_forth", "std"),
    (1.0, "location_score", "sum"),
    (1.0, "location_exclusion_score", "map"),
    (0.25, "reserved_mem_rtotal", "sum"),
)
WEIGHTS = np.array([m[0] for m in METRICS])
STD_COLS = np.array([i for i, m in enumerate(METRICS) if m[2] == "std"])
SUM_COLS = np.array([i for i, m in enumerate(METRICS) if m[2] == "sum"])
OFF_COLS = np.array([i for i, m in enumerate(METRICS) if m[2] == "off"])
MAP_COL = 18
NMETRICS = len(METRICS)

#: Node columns (one float64 array each, indexed by node number).
NODE_COLS = (
    "tmem", "nmem", "imem", "fmem", "xpos", "tdsk", "fdsk", "tcpu", "speed", "ucpu",
    "tsp", "fsp", "instsp", "hisp", "lodsk", "lcpu", "rmem", "failn1", "npri", "nsec",
    "ucpu_l", "umem_l", "udsk_l", "unet_l", "fmemF", "fdskF", "ucpuF", "instspF", "fspF",
    "conf", "locscore", "excl", "offline", "pool_m",
)  # fmt: skip

#: Instance columns.
INST_COLS = (
    "mem", "dsk", "vcpus", "su", "sp", "sp_known", "usesmem", "udisk", "online",
    "secmem", "util_c", "util_m", "util_d", "util_n", "ls", "pnode", "snode",
    "forth", "running",
)  # fmt: skip

MIRROR_NONE, MIRROR_EXTERNAL, MIRROR_INTERNAL = 0, 1, 2
_MIRROR = {
    "diskless": MIRROR_EXTERNAL,
    "file": MIRROR_NONE,
    "sharedfile": MIRROR_EXTERNAL,
    "plain": MIRROR_NONE,
    "blockdev": MIRROR_EXTERNAL,
    "drbd": MIRROR_INTERNAL,
    "rbd": MIRROR_EXTERNAL,
    "ext": MIRROR_EXTERNAL,
    "gluster": MIRROR_EXTERNAL,
}
_MOVABLE_TEMPLATES = frozenset({"drbd", "blockdev", "sharedfile", "gluster", "rbd", "ext"})
_USES_MEMORY = frozenset(
    {"ERROR_up", "ERROR_nodedown", "ERROR_nodeoffline", "running", "ERROR_wrongnode"}
)


@attrs.frozen
class Util:
    """Dynamic utilisation of one instance (htools ``DynUtil``)."""

    cpu: float = 1.0
    mem: float = 1.0
    dsk: float = 1.0
    net: float = 1.0


@attrs.define
class State:
    """Mutable numeric model of a cluster (owned by one planner run)."""

    node_names: list[str]
    inst_names: list[str]
    node: dict[str, np.ndarray]
    inst: dict[str, np.ndarray]
    peers: np.ndarray  # (N, N) int: peers[s, p] = memory reserved on s for p's instances
    excl: np.ndarray  # (I, E) bool: instance exclusion tags
    ptags: np.ndarray  # (N, E) int: primary instances per exclusion tag
    loc: np.ndarray  # (N, L) bool: node location tags
    desired: np.ndarray  # (I, L) bool: instance desired locations
    desired_n: np.ndarray  # (I,) int: number of desired locations
    gmap: np.ndarray  # (L, E) int: online (location, exclusion) pair counts
    mig_ok: np.ndarray | None  # (N, N) bool: migration allowed a -> b, None if no tags
    mirror: np.ndarray  # (I,) int
    movable: np.ndarray  # (I,) bool: template supports moves, auto_balance, not split
    in_group: np.ndarray  # (N,) bool: nodes scored (the selected group)
    inst_in_group: np.ndarray  # (I,) bool: instances whose primary is in the group
    metrics: np.ndarray = attrs.field(init=False)  # (N, 20)
    node_index: dict[str, int] = attrs.field(init=False)
    inst_index: dict[str, int] = attrs.field(init=False)
    #: (len(NODE_COLS), N) copy of the node columns for one planning step
    #: (set by the planner while it evaluates candidates, None otherwise).
    node_stack: np.ndarray | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.node_index = {n: i for i, n in enumerate(self.node_names)}
        self.inst_index = {n: i for i, n in enumerate(self.inst_names)}
        self.metrics = node_metrics(self.node)

    @property
    def has_tags(self) -> bool:
        return self.excl.shape[1] > 0

    @property
    def has_locations(self) -> bool:
        return self.loc.shape[1] > 0

    def refresh(self, nodes: Sequence[int]) -> None:
        idx = np.asarray(nodes, dtype=np.int64)
        rows = {k: v[idx] for k, v in self.node.items()}
        self.metrics[idx] = node_metrics(rows)


def _prefixed(tags: Any, prefix: str) -> list[str]:
    return [t[len(prefix) :] for t in tags if t.startswith(prefix) and len(t) > len(prefix)]


def _node_tag_set(ctags: Sequence[str], prefix: str, ntags: Any) -> set[str]:
    out: set[str] = set()
    for p in _prefixed(ctags, prefix):
        out.update(t for t in ntags if t.startswith(p + ":"))
    return out


def _split_colons(text: str) -> tuple[str, str] | None:
    i = text.find("::")
    if i < 0 or "::" in text[i + 2 :]:
        return None
    return text[:i], text[i + 2 :]


def effective_ipolicy(cluster: Cluster, group: str) -> Mapping[str, Any]:
    grp = cluster.groups.get(group)
    if grp is not None and grp.ipolicy:
        return {**DEFAULT_IPOLICY, **grp.ipolicy}
    return DEFAULT_IPOLICY


def build_state(
    cluster: Cluster,
    group: str | None = None,
    util: Mapping[str, Util] | None = None,
    mem_pool: Mapping[str, float] | None = None,
) -> State:
    """The numeric model of ``cluster``, scored over ``group`` (all nodes when None).

    ``util`` gives per-instance dynamic load (hbal's ``-U`` file / mond data);
    instances without an entry get htools' base utilisation (1, 1, 1, 1).
    ``mem_pool`` gives nodes' memory-load capacity (htools' ``utilPool``
    memory weight, set from RSS data); 1 where not given.
    """
    util = util or {}
    node_names = list(cluster.nodes)
    inst_names = list(cluster.instances)
    nidx = {n: i for i, n in enumerate(node_names)}
    nn, ni = len(node_names), len(inst_names)
    ctags = sorted(cluster.tags)
    ex_prefixes = _prefixed(ctags, EXCL_PREFIX)
    dl_prefixes = _prefixed(ctags, DESIRED_LOCATION_PREFIX)

    node = {k: np.zeros(nn) for k in NODE_COLS}
    for k, name in enumerate(node_names):
        n = cluster.nodes[name]
        offline = n.offline or n.drained
        pol = effective_ipolicy(cluster, n.group)
        vals = node
        vals["offline"][k] = offline
        if offline and n.mtotal == 0 and n.ctotal == 0:
            # A node without data ("?" in the text format) is created empty.
            tsp = 0
            vals["tcpu"][k] = 0.0
        tm, td, tc = float(n.mtotal), float(n.dtotal), float(n.ctotal)
        vals["tmem"][k] = tm
        vals["nmem"][k] = n.mnode
        vals["fmem"][k] = n.mfree
        vals["tdsk"][k] = td
        vals["fdsk"][k] = n.dfree
        vals["tcpu"][k] = tc
        vals["speed"][k] = n.cpu_speed
        vals["ucpu"][k] = n.cnos
        vals["ucpuF"][k] = n.cnos
        tsp = n.spindles_total
        vals["tsp"][k] = tsp
        vals["fsp"][k] = n.spindles_free
        vals["fspF"][k] = n.spindles_free
        vals["excl"][k] = n.exclusive_storage
        vals["hisp"][k] = float(pol["spindle-ratio"]) * tsp
        vals["lcpu"][k] = float(pol["vcpu-ratio"])
        vals["lodsk"][k] = 0.0  # floor(defReservedDiskRatio * tDsk), ratio 0
        vals["fmemF"][k] = n.mfree
        vals["fdskF"][k] = n.dfree
        vals["pool_m"][k] = (mem_pool or {}).get(name, 1.0)

    # Tags: exclusion (instances), location (nodes), desired location (instances).
    inst_excl: list[list[str]] = []
    inst_desired: list[list[str]] = []
    for name in inst_names:
        tags = sorted(cluster.instances[name].tags)
        inst_excl.append([t for t in tags if any(t.startswith(p) for p in ex_prefixes)])
        inst_desired.append([t for t in tags if any(t.startswith(p) for p in dl_prefixes)])
    excl_names = sorted({t for ts in inst_excl for t in ts})
    node_locs = [_node_tag_set(ctags, LOCATION_PREFIX, cluster.nodes[n].tags) for n in node_names]
    loc_names = sorted(set().union(*node_locs)) if node_locs else []
    eidx = {t: i for i, t in enumerate(excl_names)}
    lidx = {t: i for i, t in enumerate(loc_names)}
    excl = np.zeros((ni, len(excl_names)), dtype=bool)
    desired = np.zeros((ni, len(loc_names)), dtype=bool)
    desired_n = np.zeros(ni)
    for i in range(ni):
        for t in inst_excl[i]:
            excl[i, eidx[t]] = True
        tset = set(inst_desired[i])
        desired_n[i] = len(tset)
        for t in tset:
            if t in lidx:
                desired[i, lidx[t]] = True
    loc = np.zeros((nn, len(loc_names)), dtype=bool)
    for k, ls in enumerate(node_locs):
        for t in ls:
            loc[k, lidx[t]] = True

    # Migration tags.
    mig_sets = [_node_tag_set(ctags, MIGRATION_PREFIX, cluster.nodes[n].tags) for n in node_names]
    mig_ok: np.ndarray | None = None
    if any(mig_sets):
        pairs = [
            p
            for p in (_split_colons(t[len(ALLOW_MIGRATION_PREFIX) :]) for t in ctags
                      if t.startswith(ALLOW_MIGRATION_PREFIX))
            if p is not None
        ]  # fmt: skip
        rmig = []
        for ms in mig_sets:
            closure = set()
            for tag in ms:
                closure.add(tag)
                closure.update(a for a, b in pairs if b == tag)
            rmig.append(closure)
        mig_ok = np.array([[ms <= rm for rm in rmig] for ms in mig_sets], dtype=bool)

    inst = {k: np.zeros(ni) for k in INST_COLS}
    mirror = np.zeros(ni, dtype=np.int64)
    movable = np.zeros(ni, dtype=bool)
    for i, name in enumerate(inst_names):
        it = cluster.instances[name]
        u = util.get(name, Util())
        online = it.status != "ADMIN_offline"
        forth = it.forthcoming
        usesmem = (not forth) and it.status in _USES_MEMORY
        sp_known = all(s is not None for s in it.spindles)
        snode = nidx[it.secondary] if it.is_drbd and it.secondary in nidx else -1
        vals = inst
        vals["mem"][i] = it.memory
        vals["dsk"][i] = it.disk
        vals["vcpus"][i] = it.vcpus
        vals["su"][i] = it.spindle_use
        vals["sp"][i] = sum(s for s in it.spindles if s is not None) if sp_known else 0
        vals["sp_known"][i] = sp_known
        vals["usesmem"][i] = usesmem
        vals["udisk"][i] = it.disk_template in ("drbd", "plain")
        vals["online"][i] = online
        vals["secmem"][i] = it.memory if (online and it.auto_balance) else 0
        vals["util_c"][i], vals["util_m"][i] = u.cpu, u.mem
        vals["util_d"][i], vals["util_n"][i] = u.dsk, u.net
        vals["pnode"][i] = nidx[it.primary]
        vals["snode"][i] = snode
        vals["forth"][i] = forth
        vals["running"][i] = it.status in ("running", "ERROR_up")
        mirror[i] = _MIRROR.get(it.disk_template, MIRROR_NONE)
        movable[i] = it.disk_template in _MOVABLE_TEMPLATES and it.auto_balance
        if snode >= 0:
            vals["ls"][i] = float(np.sum(loc[nidx[it.primary]] & loc[snode]))
            if cluster.nodes[it.primary].group != cluster.nodes[node_names[snode]].group:
                movable[i] = False

    # setPri / setSec in instance order (Loader.fixNodes).
    nE = len(excl_names)
    ptags = np.zeros((nn, nE), dtype=np.int64)
    for i in range(ni):
        p, s = int(inst["pnode"][i]), int(inst["snode"][i])
        _set_pri(node, inst, i, p, loc, desired, desired_n)
        if nE:
            ptags[p] += excl[i]
        if s >= 0:
            _set_sec(node, inst, i, s)
    # conflicting primaries per node
    node["conf"] = (ptags.sum(axis=1) - (ptags > 0).sum(axis=1)).astype(float)

    # Peers (buildPeers): failN1 from the reported free memory.
    peers = np.zeros((nn, nn), dtype=np.int64)
    for i in range(ni):
        s = int(inst["snode"][i])
        if s >= 0 and not inst["forth"][i]:
            peers[s, int(inst["pnode"][i])] += int(inst["secmem"][i])
    rmem = peers.max(axis=1) if nn else np.zeros(0)
    node["rmem"] = rmem.astype(float)
    node["failn1"] = (node["fmem"] < node["rmem"]).astype(float)

    # updateMissing: xMem = recordedFreeMem - fMem (only its positive part is used).
    rec = np.trunc(node["tmem"]) - node["nmem"] - node["imem"]
    node["xpos"] = np.maximum(0.0, rec - node["fmem"])

    in_group = np.ones(nn, dtype=bool)
    if group is not None:
        in_group = np.array([cluster.nodes[n].group == group for n in node_names], dtype=bool)
    pn = inst["pnode"].astype(np.int64)
    inst_in_group = in_group[pn] if ni else np.zeros(0, dtype=bool)

    gmap = np.zeros((len(loc_names), nE), dtype=np.int64)
    if nE and len(loc_names):
        online_grp = (node["offline"] == 0) & in_group
        for i in range(ni):
            p = int(pn[i])
            if online_grp[p] and not inst["forth"][i]:
                gmap += np.outer(loc[p], excl[i]).astype(np.int64)

    return State(
        node_names=node_names,
        inst_names=inst_names,
        node=node,
        inst=inst,
        peers=peers,
        excl=excl,
        ptags=ptags,
        loc=loc,
        desired=desired,
        desired_n=desired_n,
        gmap=gmap,
        mig_ok=mig_ok,
        mirror=mirror,
        movable=movable,
        in_group=in_group,
        inst_in_group=inst_in_group,
    )


def _set_pri(
    node: dict[str, np.ndarray],
    inst: dict[str, np.ndarray],
    i: int,
    p: int,
    loc: np.ndarray,
    desired: np.ndarray,
    desired_n: np.ndarray,
) -> None:
    """Node.setPri at load time (real and forthcoming instances)."""
    udisk = inst["udisk"][i]
    online = inst["online"][i]
    vcpus = inst["vcpus"][i]
    excl_node = node["excl"][p]
    su_delta = 0.0 if excl_node else inst["su"][i] * udisk
    if not inst["forth"][i]:
        node["npri"][p] += 1
        node["ucpu"][p] += vcpus * online
        node["ucpu_l"][p] += inst["util_c"][i]
        node["umem_l"][p] += inst["util_m"][i]
        node["udsk_l"][p] += inst["util_d"][i]
        node["unet_l"][p] += inst["util_n"][i]
        node["instsp"][p] = 0.0 if excl_node else node["instsp"][p] + su_delta
        node["imem"][p] += inst["mem"][i] * inst["usesmem"][i]
        dsrd = (
            desired_n[i] - float(np.sum(desired[i] & loc[p])) if desired.shape[1] else desired_n[i]
        )
        node["locscore"][p] += inst["ls"][i] + dsrd
    else:
        node["fdskF"][p] -= inst["dsk"][i] * udisk
        if excl_node:
            node["fspF"][p] = node["fspF"][p] - inst["sp"][i] if inst["sp_known"][i] else -1
    node["ucpuF"][p] += vcpus * online
    if not inst["usesmem"][i]:
        node["fmemF"][p] -= inst["mem"][i]
    node["instspF"][p] = 0.0 if excl_node else node["instspF"][p] + su_delta


def _set_sec(node: dict[str, np.ndarray], inst: dict[str, np.ndarray], i: int, s: int) -> None:
    udisk = inst["udisk"][i]
    excl_node = node["excl"][s]
    su_delta = 0.0 if excl_node else inst["su"][i] * udisk
    if not inst["forth"][i]:
        node["nsec"][s] += 1
        node["udsk_l"][s] += inst["util_d"][i]
        node["instsp"][s] = 0.0 if excl_node else node["instsp"][s] + su_delta
    else:
        node["fdskF"][s] -= inst["dsk"][i] * udisk
        if excl_node:
            node["fspF"][s] = node["fspF"][s] - inst["sp"][i] if inst["sp_known"][i] else -1
    node["instspF"][s] = 0.0 if excl_node else node["instspF"][s] + su_delta


def _pdsk(excl: np.ndarray, fsp: np.ndarray, tsp: np.ndarray, fdsk: Any, tdsk: Any) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        dk = np.where(tdsk == 0, 1.0, fdsk / np.where(tdsk == 0, 1.0, tdsk))
        on_sp = excl != 0
        if not on_sp.any():  # no exclusive storage: the disk ratio everywhere
            return dk
        sp = np.where(tsp == 0, 1.0, fsp / np.where(tsp == 0, 1.0, tsp))
    return np.where(on_sp, sp, dk)


#: Node columns each score component is computed from (None: cluster-wide).
METRIC_DEPS: tuple[frozenset[str] | None, ...] = tuple(
    None if d is None else frozenset(d.split())
    for d in (
        "tmem nmem imem xpos",
        "excl fsp tsp fdsk tdsk",
        "failn1 nsec npri",
        "rmem tmem",
        "nsec npri",
        "npri",
        "ucpu tcpu speed",
        "ucpu_l",
        "umem_l pool_m",
        "udsk_l",
        "unet_l",
        "conf",
        "instsp hisp",
        "fmemF tmem",
        "excl fspF tsp fdskF tdsk",
        "ucpuF tcpu speed",
        "instspF hisp",
        "locscore",
        None,
        "rmem tmem",
    )
)


def metric_columns(
    r: Mapping[str, np.ndarray], wanted: Sequence[bool] | None = None
) -> list[np.ndarray | None]:
    """The twenty per-node score components of :func:`node_metrics`, one array each.

    Entry 18 (the location-exclusion map statistic, cluster-wide) is None,
    and so is every entry not ``wanted`` (all are computed when None).
    """
    w = wanted if wanted is not None else [True] * NMETRICS
    tmem = r["tmem"]
    out: list[np.ndarray | None] = [None] * NMETRICS
    with np.errstate(divide="ignore", invalid="ignore"):
        if w[0]:
            out[0] = (np.trunc(tmem) - r["nmem"] - r["imem"] - r["xpos"]) / tmem
        if w[1]:
            out[1] = _pdsk(r["excl"], r["fsp"], r["tsp"], r["fdsk"], r["tdsk"])
        if w[2]:
            out[2] = np.where(r["failn1"] != 0, r["nsec"] + r["npri"], 0.0)
        if w[3] or w[19]:
            prem = r["rmem"] / tmem
            out[3] = prem if w[3] else None
            out[19] = prem if w[19] else None
        if w[4]:
            out[4] = r["nsec"] + r["npri"]
        if w[5]:
            out[5] = r["npri"]
        if w[6]:
            out[6] = r["ucpu"] / r["tcpu"] / r["speed"]
        if w[7]:
            out[7] = r["ucpu_l"]
        if w[8]:
            out[8] = r["umem_l"] / r["pool_m"]
        if w[9]:
            out[9] = r["udsk_l"]
        if w[10]:
            out[10] = r["unet_l"]
        if w[11]:
            out[11] = r["conf"]
        if w[12]:
            out[12] = r["instsp"] / r["hisp"]
        if w[13]:
            out[13] = r["fmemF"] / tmem
        if w[14]:
            out[14] = _pdsk(r["excl"], r["fspF"], r["tsp"], r["fdskF"], r["tdsk"])
        if w[15]:
            out[15] = r["ucpuF"] / r["tcpu"] / r["speed"]
        if w[16]:
            out[16] = r["instspF"] / r["hisp"]
        if w[17]:
            out[17] = r["locscore"]
    return out


def node_metrics(r: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-node score components (``compDetailedCVNode``), shape (..., 20).

    The location-exclusion column is 0 here: it is a cluster-wide map
    statistic kept in :attr:`State.gmap`.
    """
    shape = np.broadcast(*[np.asarray(v) for v in r.values()]).shape
    out = np.zeros(shape + (NMETRICS,))
    for c, col in enumerate(metric_columns(r)):
        if col is not None:
            out[..., c] = col
    return out


def map_value(gmap: np.ndarray) -> float:
    """``getMapStatistics`` value: sum of (count - 1) over the present pairs."""
    return float(gmap.sum() - np.count_nonzero(gmap))


def _fold(values: np.ndarray) -> np.ndarray:
    """Left-fold sums along the node axis (``foldl' (+) 0``, bit for bit).

    ``np.cumsum`` adds strictly left to right (unlike ``np.sum``, which sums
    pairwise), so its last entry is exactly Haskell's left fold.
    """
    if values.shape[-2] == 0:
        return np.zeros(values.shape[:-2] + values.shape[-1:])
    return np.cumsum(values, axis=-2)[..., -1, :]


def fold_cv(m_on: np.ndarray, m_off: np.ndarray, map_val: Any) -> np.ndarray:
    """The twenty component values (``compDetailedCV``) from the per-node metrics.

    ``m_on``/``m_off``: (..., nodes, 20) metrics of the online/offline group
    nodes in node order (a leading batch axis scores several states at
    once); ``map_val``: the location-exclusion statistic (scalar or per
    batch entry).  Every value is computed in hbal's fold order, so the
    result is bit for bit hbal's.
    """
    n = m_on.shape[-2]
    out = np.zeros(m_on.shape[:-2] + (NMETRICS,))
    if n == 0:
        # compClusterStatistics zips with the (empty) online columns.
        return out
    total = _fold(m_on)
    mean = total / n
    d = m_on - mean[..., None, :]
    std = np.sqrt(_fold(d * d) / n)
    out[..., STD_COLS] = std[..., STD_COLS]
    out[..., SUM_COLS] = total[..., SUM_COLS]
    out[..., OFF_COLS] = _fold(m_off)[..., OFF_COLS]
    out[..., MAP_COL] = map_val
    return out


def weighted_cv(values: np.ndarray) -> np.ndarray:
    """``sum . zipWith (*) weights`` over the last axis (a left fold)."""
    return np.cumsum(values * WEIGHTS, axis=-1)[..., -1]


def detailed_cv(state: State) -> list[float]:
    """The twenty component values (``compDetailedCV``), hbal's fold order."""
    mask = state.in_group
    online = mask & (state.node["offline"] == 0)
    offline = mask & (state.node["offline"] != 0)
    vals = fold_cv(state.metrics[online], state.metrics[offline], map_value(state.gmap))
    return [float(v) for v in vals]


def compute_cv(state: State) -> float:
    """The cluster score (``compCV``) of the selected group."""
    return float(weighted_cv(np.array(detailed_cv(state))))


def optimal_cv(state: State) -> float:
    """``optimalCVScore``: lower bound from DRBD memory reservations."""
    mask = state.in_group
    nodes = np.flatnonzero(mask)
    if len(nodes) <= 1:
        return 0.0
    tmem = state.node["tmem"][nodes]
    total = float(tmem.sum())
    less = total - float(tmem.max())
    if less <= 0:
        return 0.0
    drbd = float(state.peers[nodes].sum())
    return 0.25 * (drbd / less - drbd / total)
