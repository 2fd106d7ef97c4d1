"""The compiled scoring kernel against the NumPy path it replaces in the search.

Every candidate (instance, move kind, target node) of generated clusters
(with exclusion and location tags, desired locations, migration tags,
offline nodes, forthcoming instances, exclusive storage, soft errors
ignored or not) and of Ganeti's test data: the kernel's score equals
``simulate`` + ``score_outcome`` to 1e-12 relative, it refuses exactly the
candidates htools refuses, and the per-record figures the incremental
search bounds its drift with are the NumPy ones.
"""

from __future__ import annotations

import random

import attrs
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.model import Cluster
from maintd.decide.balance import kernel
from maintd.decide.balance.gen import generate_cluster
from maintd.decide.balance.moves import (
    Batch,
    Move,
    PeerTops,
    base_values,
    cluster_stats,
    score_outcome,
    simulate,
)
from maintd.decide.balance.score import NODE_COLS, STD_COLS, State, build_state
from maintd.decide.balance.text import parse_text
from tests.test_balance_text import data_files, read

REL = 1e-12


def decorate(c: Cluster, seed: int, flags: dict[str, bool]) -> Cluster:
    """``c`` with the htools features the generator leaves out, chosen by ``flags``."""
    rnd = random.Random(seed)
    tags = set(c.tags)
    nodes = dict(c.nodes)
    insts = dict(c.instances)
    racks = ("r1", "r2", "r3")
    if flags["excl"]:
        tags.add("htools:iextags:svc")
    if flags["loc"]:
        tags.add("htools:nlocation:rack")
    if flags["desired"]:
        tags.add("htools:desiredlocation:rack")
    if flags["mig"]:
        tags.update(("htools:migration:hv", "htools:allowmigration:hv:a::hv:b"))
    for name, n in nodes.items():
        ntags = set(n.tags)
        if flags["loc"]:
            ntags.add(f"rack:{rnd.choice(racks)}")
        if flags["mig"]:
            ntags.add(f"hv:{rnd.choice('ab')}")
        ch: dict = {"tags": frozenset(ntags)}
        if flags["offline"] and rnd.random() < 0.15 and not n.master:
            ch["offline"] = True
        if flags["exclusive"] and rnd.random() < 0.3:
            ch.update(exclusive_storage=True, spindles_total=12, spindles_free=rnd.randrange(13))
        nodes[name] = attrs.evolve(n, **ch)
    for name, it in insts.items():
        itags = set(it.tags)
        if flags["excl"] and rnd.random() < 0.4:
            itags.add(f"svc:{rnd.choice('xyz')}")
        if flags["desired"] and rnd.random() < 0.3:
            itags.add(f"rack:{rnd.choice(racks)}")
        ch = {"tags": frozenset(itags)}
        if flags["forth"] and rnd.random() < 0.1:
            ch["forthcoming"] = True
        if flags["exclusive"] and rnd.random() < 0.3:
            ch["spindles"] = tuple(rnd.choice((1, 2, None)) for _ in it.disk_sizes or (0,))
        insts[name] = attrs.evolve(it, **ch)
    return attrs.evolve(c, tags=frozenset(tags), nodes=nodes, instances=insts)


def compare(test: SynchronousTestCase, state: State, force: bool) -> int:
    """Kernel vs NumPy on every candidate of ``state``; returns how many were feasible."""
    st_ = state
    st_.node_stack = np.stack([st_.node[k] for k in NODE_COLS])
    tops = PeerTops.of(st_.peers)
    stats = cluster_stats(st_)
    std_now = base_values(stats)[STD_COLS]
    ctx = kernel.context(st_, tops, stats, force)
    ni, nn = len(st_.inst_names), len(st_.node_names)
    s = st_.inst["snode"].astype(np.int64)
    targets = np.arange(nn)
    feasible = 0
    for move in Move:
        recs = np.arange(ni) if move != Move.FAILOVER else np.flatnonzero(s >= 0)
        if move in (Move.REPLACE_PRIMARY, Move.REPLACE_SECONDARY,
                    Move.REPLACE_AND_FAILOVER, Move.FAILOVER_AND_REPLACE):  # fmt: skip
            recs = recs[s[recs] >= 0]
        if len(recs) == 0:
            continue
        tg = targets if move != Move.FAILOVER else np.array([-1])
        own = move != Move.FAILOVER
        mat, dm, gm, um = kernel.score_grid(ctx, int(move), recs, tg, own)
        p = st_.inst["pnode"][recs].astype(np.int64)
        rows = np.repeat(np.arange(len(recs)), len(tg))
        tt = np.tile(tg, len(recs))
        keep = (tt != p[rows]) & (tt != s[recs][rows]) if own else np.ones(len(rows), bool)
        rows, tt = rows[keep], tt[keep]
        b = Batch(state=st_, tops=tops, ii=recs[rows], force=force)
        det: dict[str, np.ndarray] = {}
        want = score_outcome(b, stats, simulate(b, move, np.maximum(tt, 0)), det)
        got = mat[rows, np.searchsorted(tg, tt)] if own else mat[rows, 0]
        fw, fg = np.isfinite(want), np.isfinite(got)
        test.assertTrue(np.array_equal(fw, fg), f"{move!r}: feasibility differs")
        np.testing.assert_allclose(got[fg], want[fw], rtol=REL, atol=0, err_msg=repr(move))
        if own:
            test.assertTrue(np.all(np.isinf(mat[np.arange(len(recs)), np.searchsorted(tg, p)])))
        feasible += int(fw.sum())
        # The per-record figures over the feasible candidates.
        for r in np.unique(rows[fw]):
            sel = fw & (rows == r)
            u = det["u"][sel]
            np.testing.assert_allclose(
                dm[r], np.abs(det["d"][sel]).max(axis=0), rtol=REL, atol=1e-9
            )
            np.testing.assert_allclose(
                gm[r], np.abs(np.sqrt(u) - std_now).max(axis=0), rtol=1e-9, atol=1e-12
            )
            np.testing.assert_allclose(um[r], u.min(axis=0), rtol=REL, atol=1e-15)
        none = np.setdiff1d(np.arange(len(recs)), rows[fw])
        test.assertTrue(np.all(np.isinf(um[none])))
    st_.node_stack = None
    return feasible


class KernelAgreesWithNumPy(SynchronousTestCase):
    @settings(max_examples=25, suppress_health_check=list(HealthCheck))
    @given(
        nodes=st.integers(3, 12),
        insts=st.integers(1, 60),
        seed=st.integers(0, 10_000),
        flags=st.fixed_dictionaries(
            {
                k: st.booleans()
                for k in ("excl", "loc", "desired", "mig", "offline", "forth", "exclusive")
            }
        ),
        force=st.booleans(),
    )
    def test_generated(self, nodes: int, insts: int, seed: int, flags: dict, force: bool) -> None:
        c = decorate(generate_cluster(nodes, insts, seed=seed), seed, flags)
        compare(self, build_state(c), force)

    def test_all_features_at_once(self) -> None:
        flags = dict.fromkeys(
            ("excl", "loc", "desired", "mig", "offline", "forth", "exclusive"), True
        )
        total = 0
        for seed in range(4):
            c = decorate(generate_cluster(10, 50, seed=seed), seed, flags)
            total += compare(self, build_state(c), seed % 2 == 1)
        self.assertGreater(total, 1000)

    def test_ganeti_data(self) -> None:
        total = 0
        for path in data_files():
            try:
                c = parse_text(read(path))
            except Exception:  # files hbal refuses are tested elsewhere
                continue
            if not c.nodes:
                continue
            for force in (False, True):
                total += compare(self, build_state(c), force)
        self.assertGreater(total, 1000)
