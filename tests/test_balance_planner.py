"""Planner behaviour: allowed nodes, N+1, policies, move kinds, jobsets."""

from __future__ import annotations

import attrs
import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.model import Cluster
from maintd.decide.balance.gen import generate_cluster
from maintd.decide.balance.jobsets import commands, short_code, split_jobs
from maintd.decide.balance.moves import Move
from maintd.decide.balance.planner import Options, PlannedMove, final_cluster, plan
from maintd.decide.balance.score import build_state, compute_cv
from maintd.decide.balance.text import parse_text


def cluster(seed: int = 5, nodes: int = 12, insts: int = 80) -> Cluster:
    return generate_cluster(nodes, insts, seed=seed)


def n1_failing(c: Cluster) -> set[str]:
    st = build_state(c)
    return {st.node_names[k] for k in np.flatnonzero(st.node["failn1"] != 0)}


class AllowedNodes(SynchronousTestCase):
    def test_moves_only_touch_allowed_nodes(self) -> None:
        c = cluster()
        names = sorted(c.nodes)
        allowed = set(names[: len(names) // 2 + 2])
        result = plan(c, Options(allowed_nodes=allowed))
        self.assertTrue(result.moves, "expected some moves on the allowed half")
        for mv in result.moves:
            self.assertLessEqual(set(mv.nodes), allowed, mv)

    def test_no_allowed_nodes_no_moves(self) -> None:
        result = plan(cluster(), Options(allowed_nodes=set()))
        self.assertEqual(result.moves, ())
        self.assertEqual(result.final_score, result.initial_score)

    def test_offline_nodes_are_never_targets(self) -> None:
        c = cluster(seed=7)
        off = sorted(c.nodes)[3]
        c = attrs.evolve(c, nodes={**c.nodes, off: attrs.evolve(c.nodes[off], offline=True)})
        result = plan(c)
        self.assertTrue(result.moves)
        for mv in result.moves:
            self.assertNotIn(off, (mv.new_primary, mv.new_secondary))
        # instances are moved off it (offline primaries weigh 16 in the score)
        self.assertTrue(any(mv.old_primary == off for mv in result.moves))


class Checks(SynchronousTestCase):
    def test_score_decreases_and_final_state_rescored(self) -> None:
        c = cluster(seed=9)
        result = plan(c)
        scores = [result.initial_score] + [m.score for m in result.moves]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertAlmostEqual(
            compute_cv(build_state(final_cluster(c, result))), result.final_score, 9
        )

    def test_no_new_n1_failures(self) -> None:
        c = cluster(seed=3, nodes=8, insts=70)
        before = n1_failing(c)
        after = n1_failing(final_cluster(c, plan(c)))
        self.assertLessEqual(after, before | set())

    def test_vcpu_ratio_policy_respected(self) -> None:
        c = cluster(seed=4)
        tight = {"vcpu-ratio": 1.0}
        groups = {
            g: attrs.evolve(grp, ipolicy={**grp.ipolicy, **tight}) for g, grp in c.groups.items()
        }
        c = attrs.evolve(c, groups=groups)
        before = build_state(c)
        over_before = set(np.flatnonzero(before.node["ucpu"] / before.node["tcpu"] > 1.0))
        result = plan(c)
        after = build_state(final_cluster(c, result))
        over_after = set(np.flatnonzero(after.node["ucpu"] / after.node["tcpu"] > 1.0))
        # No move puts a node above the ratio (nodes already above may only improve).
        self.assertLessEqual(over_after, over_before)
        for k in over_after:
            self.assertLessEqual(after.node["ucpu"][k], before.node["ucpu"][k])

    def test_exclusion_tags_never_collide(self) -> None:
        text = (
            "g|u|preferred||\n\n"
            "n1|16384|0|13312|409600|153600|16|N|u|1\n"
            "n2|16384|0|16384|409600|409600|16|N|u|1\n"
            "n3|16384|0|16384|409600|409600|16|N|u|1\n\n"
            "a|1024|51200|1|running|Y|n1|n2|drbd|svc:dns|1\n"
            "b|1024|51200|1|running|Y|n1|n3|drbd|svc:dns|1\n"
            "c|1024|51200|1|running|Y|n1|n2|drbd|svc:web|1\n\n"
            "htools:iextags:svc\n\n"
        )
        c = parse_text(text)
        final = final_cluster(c, plan(c))
        for node in final.nodes.values():
            tags = [t for i in node.primaries for t in final.instances[i].tags]
            self.assertEqual(len(tags), len(set(tags)), node.name)

    def test_no_disk_moves_only_failovers(self) -> None:
        result = plan(cluster(seed=6), Options(disk_moves=False))
        self.assertTrue(result.moves)
        # DRBD instances fail over, shared-storage ones fail over to any node.
        self.assertLessEqual({m.kind for m in result.moves}, {Move.FAILOVER, Move.FAILOVER_TO_ANY})
        self.assertIn(Move.FAILOVER, {m.kind for m in result.moves})

    def test_no_instance_moves_only_secondaries(self) -> None:
        result = plan(cluster(seed=6), Options(instance_moves=False))
        self.assertTrue(result.moves)
        self.assertEqual({m.kind for m in result.moves}, {Move.REPLACE_SECONDARY})

    def test_max_length_and_min_gain(self) -> None:
        c = cluster(seed=8)
        self.assertEqual(len(plan(c, Options(max_length=3)).moves), 3)
        full = plan(c)
        coarse = plan(c, Options(min_gain=1.0, min_gain_limit=100.0))
        self.assertLess(len(coarse.moves), len(full.moves))
        for a, b in zip(
            [coarse.initial_score] + [m.score for m in coarse.moves],
            [m.score for m in coarse.moves],
            strict=False,
        ):
            self.assertGreaterEqual(a - b, 1.0 - 1e-9)

    def test_stop_hook(self) -> None:
        c = cluster(seed=8)
        seen: list[PlannedMove] = []
        result = plan(c, stop=lambda mv: len(seen) >= 2 or bool(seen.append(mv)))
        self.assertEqual(len(result.moves), 2)
        self.assertEqual([m.instance for m in result.moves], [m.instance for m in seen])


class Jobsets(SynchronousTestCase):
    def test_jobsets_never_share_a_node(self) -> None:
        for seed in (1, 2, 3):
            moves = plan(cluster(seed=seed, nodes=16, insts=100)).moves
            jobsets = split_jobs(moves)
            self.assertEqual([m for js in jobsets for m in js], list(moves))
            for js in jobsets:
                used: set[str] = set()
                for mv in js:
                    self.assertFalse(used & set(mv.nodes), js)
                    used |= set(mv.nodes)
            # hbal groups from the last move back: a jobset ends only because its
            # last move conflicts with the jobset after it
            for prev, nxt in zip(jobsets, jobsets[1:], strict=False):
                nxt_nodes = {n for mv in nxt for n in mv.nodes}
                self.assertTrue(set(prev[-1].nodes) & nxt_nodes)

    def test_codes_and_commands(self) -> None:
        mv = PlannedMove("i1", Move.REPLACE_PRIMARY, "a", "b", "c", "b", 1.0)
        self.assertEqual(short_code(mv), "f r:c f")
        self.assertEqual(commands(mv), ["migrate -f i1", "replace-disks -n c i1", "migrate -f i1"])
        self.assertEqual(mv.nodes, ("c", "b", "a"))
        down = PlannedMove("i2", Move.FAILOVER, "a", "b", "b", "a", 1.0)
        self.assertEqual(commands(down, running=False), ["failover -f i2"])
