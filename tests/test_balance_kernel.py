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


#: What :func:`decorate` can add to a generated cluster.
FLAGS = ("excl", "loc", "desired", "mig", "offline", "forth", "exclusive")


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
        # Cached sources (what the search does for untouched records) change nothing.
        cache = kernel.SourceCache(len(Move), ni)
        once = kernel.score_grid(ctx, int(move), recs, tg, own, cache, int(move), kernel.WRITE)
        cols = tg[::2]
        again = kernel.score_grid(ctx, int(move), recs, cols, own, cache, int(move), kernel.READ)
        fresh = kernel.score_grid(ctx, int(move), recs, cols, own)
        for a, b in zip(once, (mat, dm, gm, um), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(again, fresh, strict=True):
            np.testing.assert_array_equal(a, b)
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
                for k in FLAGS
            }
        ),
        force=st.booleans(),
    )
    def test_generated(self, nodes: int, insts: int, seed: int, flags: dict, force: bool) -> None:
        c = decorate(generate_cluster(nodes, insts, seed=seed), seed, flags)
        compare(self, build_state(c), force)

    def test_all_features_at_once(self) -> None:
        flags = dict.fromkeys(FLAGS, True)
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


class BoundBookkeeping(SynchronousTestCase):
    """The search's per-record bookkeeping done in the kernel, against NumPy."""

    @settings(max_examples=40, suppress_health_check=list(HealthCheck))
    @given(
        nrec=st.integers(1, 6),
        nt=st.integers(1, 9),
        seed=st.integers(0, 10_000),
    )
    def test_fold_full_and_columns(self, nrec: int, nt: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        ni, kk = 10, 4
        recs = np.sort(rng.choice(ni, nrec, replace=False))
        targets = np.sort(rng.choice(50, nt, replace=False))
        mat = rng.choice([1.0, 2.0, 2.5, np.inf], size=(nrec, nt)) + rng.random((nrec, nt)) * (
            rng.random() < 0.5
        )
        fig = [rng.random((nrec, kernel.NSTD)) for _ in range(3)]
        base = 1.5
        top_g, top_t = np.zeros((ni, kk)), np.zeros((ni, kk), dtype=np.int64)
        tail, aux, drift = np.zeros(ni), np.zeros(ni), np.ones(ni)
        evaluated = np.zeros(ni, dtype=np.int64)
        dmax, gmax, umin = (np.zeros((ni, kernel.NSTD)) for _ in range(3))
        kernel.fold_full(mat, *fig, base, recs, targets, 7, top_g, top_t, tail, aux, drift,
                         evaluated, dmax, gmax, umin)  # fmt: skip
        gains = mat - base
        for r, i in enumerate(recs):
            want = np.sort(gains[r])[:kk]
            got = top_g[i, : len(want)]
            np.testing.assert_array_equal(got, want)
            self.assertTrue(np.all(np.isinf(top_g[i, len(want) :])))
            for q in range(min(kk, nt)):
                if np.isfinite(got[q]):  # the target holds that gain
                    j = np.searchsorted(targets, top_t[i, q])
                    self.assertEqual(gains[r, j], got[q])
            self.assertEqual(tail[i], want[kk - 1] if nt >= kk else np.inf)
            self.assertEqual((aux[i], drift[i], evaluated[i]), (np.inf, 0.0, 7))
            np.testing.assert_array_equal(dmax[i], fig[0][r])
        # Columns: the lowest score (minus base, plus drift) and the figures folded in.
        aux0 = rng.random(ni)
        aux, drift = aux0.copy(), rng.random(ni)
        before = [a.copy() for a in (dmax, gmax, umin)]
        new = [rng.random((nrec, kernel.NSTD)) for _ in range(3)]
        kernel.fold_columns(mat, *new, base, recs, aux, drift, dmax, gmax, umin)
        for r, i in enumerate(recs):
            self.assertEqual(aux[i], min(aux0[i], mat[r].min() - base + drift[i]))
            np.testing.assert_array_equal(dmax[i], np.maximum(before[0][i], new[0][r]))
            np.testing.assert_array_equal(gmax[i], np.maximum(before[1][i], new[1][r]))
            np.testing.assert_array_equal(umin[i], np.minimum(before[2][i], new[2][r]))

    @settings(max_examples=200, suppress_health_check=list(HealthCheck))
    @given(
        n=st.integers(4, 30),
        ncand=st.integers(1, 12),
        seed=st.integers(0, 100_000),
        spread=st.sampled_from([1e-4, 1e-2, 1.0, 50.0]),
        steps=st.integers(1, 4),
    )
    def test_drift_bound_holds(self, n: int, ncand: int, seed: int, spread: float, steps: int) -> None:
        """Every candidate's gain moves by at most the bound drift_update adds,
        over several cluster changes that leave the candidate's nodes alone,
        and its variance stays above the new minimum (search.py's argument)."""
        rng = np.random.default_rng(seed)
        ns = kernel.NSTD
        m = 1.0 + spread * rng.random((n, ns))  # per node, per component
        # Candidates change two of the first n-1 nodes; the last node moves.
        cand = [(rng.choice(n - 1, 2, replace=False), 1.0 + spread * rng.random((2, ns)))
                for _ in range(ncand)]  # fmt: skip

        def figures(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            s, q = m.sum(axis=0), (m * m).sum(axis=0)
            v = np.maximum(q / n - (s / n) ** 2, 0.0)
            d = np.array([(new - m[nodes]).sum(axis=0) for nodes, new in cand])
            dq = np.array([(new * new - m[nodes] ** 2).sum(axis=0) for nodes, new in cand])
            u = np.maximum((q + dq) / n - ((s + d) / n) ** 2, 0.0)
            return v, d, u

        v, d, u = figures(m)
        g = np.sqrt(u) - np.sqrt(v)
        dmax = np.abs(d).max(axis=0)[None, None]
        gmax = np.abs(g).max(axis=0)[None, None].copy()
        umin = u.min(axis=0)[None, None].copy()
        drift = np.zeros((1, 1))
        active = np.ones((1, 1), dtype=np.bool_)
        for _ in range(steps):
            m2 = m.copy()
            m2[n - 1] = 1.0 + spread * rng.random(ns)
            v1, d1, u1 = figures(m2)
            np.testing.assert_array_equal(d1, d)  # the candidates' own changes stay
            ds = np.abs(m2.sum(axis=0) - m.sum(axis=0))
            g_before = gmax.copy()
            kernel.drift_update(active, v, v1, ds, float(n), dmax, gmax, umin, drift)
            x = gmax[0, 0] - g_before[0, 0]
            g1 = np.sqrt(u1) - np.sqrt(v1)
            # The test's own variances are sums of squares minus a square
            # (values of size (1 + spread)): their rounding, through sqrt.
            ulp = 64 * np.finfo(float).eps * (1.0 + spread) ** 2
            slack = ulp / np.sqrt(np.maximum(np.minimum(u, u1).min(axis=0), ulp)) + ulp
            self.assertTrue(np.all(np.abs(g1 - g) <= x + slack), (np.abs(g1 - g).max(axis=0), x))
            self.assertTrue(np.all(u1 >= umin[0, 0] - ulp))
            self.assertTrue(np.all(np.abs(g1) <= gmax[0, 0] + slack))
            m, v, u, g = m2, v1, u1, g1  # the bounds accumulate from the first figures
            self.assertTrue(np.isfinite(drift[0, 0]))
