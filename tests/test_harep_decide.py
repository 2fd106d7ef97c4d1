"""harep state machine and repair decisions (pure)."""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as hs
from twisted.trial.unittest import SynchronousTestCase

from maintd.decide.harep.decide import (
    Plan,
    Repair,
    Status,
    Verdict,
    decide_without_jobs,
    detect,
    iallocator_for,
    is_own,
    plan_pending,
    plan_step,
    policy_for,
    repair_id,
    tag_state,
)
from maintd.decide.harep.tags import RepairResult, RepairTag, RepairType, parse
from tests.harep_fixtures import P, drbd, make_cluster, plain, with_tags

NOW = 2_000_000.0
ALL = frozenset(f"n{i}" for i in range(1, 6))


def pending(rtype: str, rid: str, ts: int, jobs: str = "") -> str:
    return f"{P}pending:{rtype}:{rid}:{ts}:{jobs}"


def result(rtype: str, rid: str, ts: int, res: str, jobs: str = "") -> str:
    return f"{P}result:{rtype}:{rid}:{ts}:{res}:{jobs}"


class TagStateTests(SynchronousTestCase):
    def test_no_tags_is_healthy(self) -> None:
        st = tag_state("i", ["foo", P + "failover"])
        self.assertEqual((st.status, st.current, st.problems), (Status.HEALTHY, None, ()))

    def test_single_pending(self) -> None:
        tag = pending("failover", "a", 10, "5")
        st = tag_state("i", [tag])
        self.assertEqual(st.status, Status.PENDING)
        self.assertEqual(st.current_text, tag)
        self.assertEqual(st.current.jobs, (5,))

    def test_newest_success_wins_and_older_results_become_obsolete(self) -> None:
        old = result("failover", "a", 10, "success", "1")
        new = result("reinstall", "b", 20, "success", "2")
        st = tag_state("i", [new, old])
        self.assertEqual((st.status, st.current_text, st.obsolete), (Status.HEALTHY, new, (old,)))

    def test_earliest_failure_wins(self) -> None:
        fail1 = result("failover", "a", 10, "failure", "1")
        fail2 = result("failover", "b", 20, "failure", "2")
        later = result("failover", "c", 30, "success", "3")
        st = tag_state("i", [later, fail2, fail1])
        self.assertEqual((st.status, st.current_text), (Status.FAILED, fail1))

    def test_pending_after_success_is_pending(self) -> None:
        done = result("failover", "a", 10, "success", "1")
        pend = pending("fix-storage", "b", 20, "2")
        st = tag_state("i", [done, pend])
        self.assertEqual((st.status, st.current_text, st.obsolete), (Status.PENDING, pend, (done,)))

    def test_two_pending_repairs_are_an_error_for_this_instance(self) -> None:
        st = tag_state(
            "web1", [pending("failover", "a", 10, "1"), pending("reinstall", "b", 20, "2")]
        )
        self.assertEqual(st.status, Status.ERROR)
        self.assertIn("web1", st.error)

    def test_pending_followed_by_newer_result_is_an_error(self) -> None:
        st = tag_state(
            "i", [pending("failover", "a", 10, "1"), result("failover", "b", 20, "success")]
        )
        self.assertEqual(st.status, Status.ERROR)

    def test_same_repair_result_beats_its_pending_copy(self) -> None:
        pend = pending("failover", "a", 10, "1")
        res = result("failover", "a", 30, "success", "1")
        st = tag_state("i", [pend, res])
        self.assertEqual((st.status, st.current_text, st.obsolete), (Status.HEALTHY, res, (pend,)))

    def test_pending_copies_of_one_repair_are_one_repair(self) -> None:
        # maintd's placeholder plus its updated copy: same id, no error.
        p0 = pending("failover", "a", 10, "")
        p1 = pending("failover", "a", 10, "7")
        st = tag_state("i", [p0, p1])
        self.assertEqual((st.status, st.current.jobs), (Status.PENDING, (7,)))
        self.assertEqual(set(st.current_group), {p0, p1})

    def test_malformed_tags_reported_with_instance_name_and_ignored(self) -> None:
        st = tag_state("db7", [P + "pending:failover:x", result("failover", "a", 1, "success")])
        self.assertEqual(st.status, Status.HEALTHY)
        self.assertEqual(len(st.problems), 1)
        self.assertIn("db7", st.problems[0])
        self.assertIn("pending:failover:x", st.problems[0])


class DetectTests(SynchronousTestCase):
    def check(self, inst, expected: Repair | None, **flags) -> None:
        cluster = make_cluster(instances=[inst], **flags)
        found = detect(cluster, inst)
        self.assertEqual(found.repair if found else None, expected, flags)

    def test_drbd_matrix(self) -> None:
        self.check(drbd(), None)
        self.check(drbd(), Repair.REINSTALL, offline=["n2", "n3"])
        self.check(drbd(), Repair.FAILOVER, offline=["n2"])
        self.check(drbd(), Repair.FAILOVER, offline=["n2"], drained=["n3"])
        self.check(drbd(), Repair.REPLACE_SECONDARY, offline=["n3"])
        self.check(drbd(), Repair.REPLACE_SECONDARY, drained=["n3"])
        self.check(drbd(), Repair.REPLACE_SECONDARY, drained=["n2", "n3"])

    def test_drained_primary_running_drbd_migrates(self) -> None:
        self.check(drbd(), Repair.MIGRATE, drained=["n2"])
        self.check(drbd(admin_state="down"), Repair.FAILOVER, drained=["n2"])

    def test_plain(self) -> None:
        self.check(plain(), Repair.REINSTALL, offline=["n2"])
        self.check(plain(), None, drained=["n2"])
        self.check(plain(), None)

    def test_instances_marked_offline_untouched(self) -> None:
        self.check(drbd(admin_state="offline"), None, offline=["n2"])
        self.check(plain(admin_state="offline"), None, offline=["n2"])

    def test_other_templates_untouched(self) -> None:
        for template in ("diskless", "file", "rbd", "sharedfile"):
            inst = plain(disk_template=template)
            self.check(inst, None, offline=["n2"])


class PlanStepTests(SynchronousTestCase):
    def test_failover_offline_primary_keeps_the_consistency_check(self) -> None:
        inst = drbd()
        cl = make_cluster(offline=["n2"], instances=[inst])
        plan = plan_step(cl, inst, Repair.FAILOVER, 0, ALL)
        # harep's opcode: ignore_consistency false (Ganeti itself tolerates
        # degraded disks on the target when the primary is offline).
        self.assertEqual(
            [(o.method, dict(o.kwargs)) for o in plan.ops],
            [("failover_instance", {"ignore_consistency": False})],
        )
        self.assertEqual(plan.touched, {"n3"})

    def test_migrate_touches_both_nodes(self) -> None:
        inst = drbd()
        cl = make_cluster(drained=["n2"], instances=[inst])
        plan = plan_step(cl, inst, Repair.MIGRATE, 0, ALL)
        self.assertEqual(plan.ops[0].method, "migrate_instance")
        self.assertEqual(plan.ops[0].kwargs["mode"], "live")
        self.assertEqual(plan.touched, {"n2", "n3"})

    def test_replace_secondary_leaves_the_node_to_the_iallocator(self) -> None:
        inst = drbd()
        cl = make_cluster(offline=["n3"], instances=[inst])
        plan = plan_step(cl, inst, Repair.REPLACE_SECONDARY, 0, ALL)
        self.assertEqual(
            dict(plan.ops[0].kwargs), {"mode": "replace_new_secondary", "iallocator": "hail"}
        )
        # The iallocator relocates within the group: all of it is claimed.
        self.assertEqual(plan.touched, ALL)
        named = plan_step(cl, inst, Repair.REPLACE_SECONDARY, 0, ALL, iallocator="x")
        self.assertEqual(named.ops[0].kwargs["iallocator"], "x")

    def test_cluster_default_iallocator(self) -> None:
        inst = drbd()
        cl = attrs.evolve(
            make_cluster(offline=["n3"], instances=[inst]), default_iallocator="my-alloc"
        )
        self.assertEqual(iallocator_for(cl), "my-alloc")
        self.assertEqual(iallocator_for(cl, "other"), "other")
        self.assertEqual(iallocator_for(attrs.evolve(cl, default_iallocator="")), "hail")
        plan = plan_step(cl, inst, Repair.REPLACE_SECONDARY, 0, ALL)
        self.assertEqual(plan.ops[0].kwargs["iallocator"], "my-alloc")

    def test_replace_secondary_needs_a_node_to_pick(self) -> None:
        inst = drbd()
        cl = make_cluster(offline=["n3"], drained=["n1", "n4", "n5"], instances=[inst])
        blocked = plan_step(cl, inst, Repair.REPLACE_SECONDARY, 0, ALL)
        self.assertIn("no usable node", blocked.why)

    def test_claimed_usable_node_in_the_iallocators_reach_blocks(self) -> None:
        inst = drbd()
        cl = make_cluster(offline=["n3"], instances=[inst])
        blocked = plan_step(cl, inst, Repair.REPLACE_SECONDARY, 0, ALL - {"n4"})
        self.assertIn("n4", blocked.why)
        # An offline node that is not free (its incident) does not block.
        cl = make_cluster(offline=["n3", "n4"], instances=[inst])
        plan = plan_step(cl, inst, Repair.REPLACE_SECONDARY, 0, ALL - {"n4"})
        self.assertIsInstance(plan, Plan)

    def test_failover_to_drained_secondary_waits(self) -> None:
        inst = drbd()
        cl = make_cluster(offline=["n2"], drained=["n3"], instances=[inst])
        blocked = plan_step(cl, inst, Repair.FAILOVER, 0, ALL)
        self.assertIn("drained", blocked.why)

    def test_busy_instance_node_blocks(self) -> None:
        inst = drbd()
        cl = make_cluster(offline=["n2"], instances=[inst])
        blocked = plan_step(cl, inst, Repair.FAILOVER, 0, ALL - {"n3"})
        self.assertIn("n3", blocked.why)

    def test_reinstall_is_recreate_disks_by_the_iallocator_then_reinstall(self) -> None:
        for inst, offline in ((drbd(), ["n2", "n3"]), (plain(), ["n2"])):
            cl = make_cluster(offline=offline, instances=[inst])
            plan = plan_step(cl, inst, Repair.REINSTALL, 0, ALL)
            self.assertEqual(
                [(o.method, dict(o.kwargs)) for o in plan.ops],
                [
                    ("recreate_disks", {"iallocator": "hail"}),
                    ("reinstall_instance", {"start": True}),
                ],
            )
            # Ganeti asks the iallocator with no group: any node may be picked.
            self.assertEqual(plan.touched, ALL)
            # A stopped instance stays stopped.
            stopped = attrs.evolve(inst, admin_state="down")
            plan = plan_step(cl, stopped, Repair.REINSTALL, 0, ALL)
            self.assertEqual(dict(plan.ops[1].kwargs), {"start": False})
            # The second job alone (its first was submitted in an earlier round).
            rest = plan_step(cl, inst, Repair.REINSTALL, 1, ALL, start=False)
            self.assertEqual(
                [(o.method, dict(o.kwargs)) for o in rest.ops],
                [("reinstall_instance", {"start": False})],
            )


class NewRepairTests(SynchronousTestCase):
    def decide(self, inst, free=ALL, **kw):
        cl = make_cluster(instances=[inst], **kw)
        return decide_without_jobs(cl, inst, tag_state(inst.name, inst.tags), NOW, free)

    def test_healthy(self) -> None:
        self.assertEqual(self.decide(with_tags(drbd(), P + "reinstall")).verdict, Verdict.HEALTHY)

    def test_not_enabled_does_nothing(self) -> None:
        d = self.decide(drbd(), offline=["n2"])
        self.assertEqual((d.verdict, d.add_tag, d.ops), (Verdict.NOT_ENABLED, None, ()))

    def test_repair_writes_pending_tag_and_ops(self) -> None:
        d = self.decide(drbd(), offline=["n2"], cluster_tags=[P + "failover"])
        self.assertEqual(d.verdict, Verdict.REPAIR)
        self.assertEqual(d.add_tag.type, RepairType.FAILOVER)
        self.assertIsNone(d.add_tag.result)
        self.assertEqual(d.add_tag.jobs, ())
        self.assertEqual(d.add_tag.ts, int(NOW))
        self.assertTrue(is_own("inst1", d.add_tag))
        self.assertEqual(parse(d.add_tag.format()), d.add_tag)
        self.assertEqual(d.ops[0].method, "failover_instance")

    def test_new_repair_removes_previous_result(self) -> None:
        old = result("failover", "a", 10, "success", "1")
        d = self.decide(with_tags(drbd(), old), offline=["n3"], group_tags=[P + "fix-storage"])
        self.assertEqual(d.verdict, Verdict.REPAIR)
        self.assertEqual(d.remove_tags, (old,))

    def test_enoperm_when_beyond_allowed(self) -> None:
        d = self.decide(drbd(), offline=["n2"], group_tags=[P + "migrate"])
        self.assertEqual(d.verdict, Verdict.ENOPERM)
        self.assertEqual(
            (d.add_tag.type, d.add_tag.result), (RepairType.FAILOVER, RepairResult.ENOPERM)
        )
        self.assertEqual(d.ops, ())

    def test_enoperm_not_rewritten_every_round(self) -> None:
        known = result("failover", "a", 10, "enoperm")
        d = self.decide(with_tags(drbd(), known), offline=["n2"], group_tags=[P + "migrate"])
        self.assertEqual((d.verdict, d.add_tag), (Verdict.ENOPERM_KNOWN, None))

    def test_migrate_needs_migrate_permission(self) -> None:
        d = self.decide(drbd(), drained=["n2"], cluster_tags=[P + "fix-storage"])
        self.assertEqual(d.verdict, Verdict.ENOPERM)
        d = self.decide(drbd(), drained=["n2"], cluster_tags=[P + "migrate"])
        self.assertEqual((d.verdict, d.ops[0].method), (Verdict.REPAIR, "migrate_instance"))

    def test_suspended(self) -> None:
        inst = with_tags(drbd(), P + "failover", P + f"suspend:{int(NOW) + 10}")
        self.assertEqual(self.decide(inst, offline=["n2"]).verdict, Verdict.SUSPENDED)
        expired = with_tags(drbd(), P + "failover", P + f"suspend:{int(NOW) - 10}")
        self.assertEqual(self.decide(expired, offline=["n2"]).verdict, Verdict.REPAIR)

    def test_instance_beats_group_beats_cluster(self) -> None:
        inst = with_tags(drbd(), P + "fix-storage")
        d = self.decide(
            inst, offline=["n2"], group_tags=[P + "reinstall"], cluster_tags=[P + "reinstall"]
        )
        self.assertEqual(d.verdict, Verdict.ENOPERM)
        d = self.decide(
            drbd(), offline=["n2"], group_tags=[P + "failover"], cluster_tags=[P + "suspend"]
        )
        self.assertEqual(d.verdict, Verdict.REPAIR)

    def test_blocked_when_nodes_busy(self) -> None:
        d = self.decide(drbd(), offline=["n2"], cluster_tags=[P + "failover"], free=frozenset())
        self.assertEqual((d.verdict, d.add_tag), (Verdict.BLOCKED, None))

    def test_failed_and_error_states_left_alone(self) -> None:
        failed = with_tags(drbd(), result("failover", "a", 1, "failure", "3"))
        d = self.decide(failed, offline=["n2"], cluster_tags=[P + "reinstall"])
        self.assertEqual((d.verdict, d.ops, d.add_tag), (Verdict.FAILED, (), None))
        bad = with_tags(drbd(), pending("failover", "a", 1, "3"), pending("failover", "b", 2, "4"))
        d = self.decide(bad, offline=["n2"], cluster_tags=[P + "reinstall"])
        self.assertEqual(d.verdict, Verdict.ERROR)


class PendingTests(SynchronousTestCase):
    def decide(self, inst, jobs, statuses, free=ALL, **kw):
        cl = make_cluster(instances=[inst], **kw)
        st = tag_state(inst.name, inst.tags)
        self.assertEqual(st.status, Status.PENDING)
        return plan_pending(cl, inst, st, jobs, statuses, NOW, free)

    def test_running_jobs_wait(self) -> None:
        inst = with_tags(drbd(), pending("failover", "a", 10, "5"))
        d = self.decide(inst, (5,), {5: "running"})
        self.assertEqual((d.verdict, d.add_tag, d.remove_tags), (Verdict.WAITING, None, ()))

    def test_success_replaces_pending_with_result(self) -> None:
        tag = pending("failover", "a", 10, "5")
        d = self.decide(with_tags(drbd(), tag), (5,), {5: "success"})
        self.assertEqual(d.verdict, Verdict.FINISHED)
        self.assertEqual(d.add_tag.format(), result("failover", "a", int(NOW), "success", "5"))
        self.assertEqual(d.remove_tags, (tag,))

    def test_failure_and_lost_jobs_fail(self) -> None:
        for status in ("error", "canceled", "lost"):
            tag = pending("fix-storage", "a", 10, "5+6")
            d = self.decide(with_tags(drbd(), tag), (5, 6), {5: "success", 6: status})
            self.assertEqual(d.add_tag.result, RepairResult.FAILURE, status)

    def test_placeholder_uses_recorded_jobs(self) -> None:
        tag = pending("failover", "a", 10, "")
        d = self.decide(with_tags(drbd(), tag), (9,), {9: "success"})
        self.assertEqual(d.add_tag.jobs, (9,))

    def test_empty_pending_resolves_as_success_like_harep(self) -> None:
        d = self.decide(with_tags(drbd(), pending("failover", "a", 10, "")), (), {}, offline=["n2"])
        self.assertEqual(d.add_tag.result, RepairResult.SUCCESS)

    def test_own_placeholder_without_jobs_starts_the_repair(self) -> None:
        rid = repair_id("inst1", RepairType.FAILOVER, 10)
        inst = with_tags(drbd(), pending("failover", rid, 10, ""), P + "failover")
        d = self.decide(inst, (), {}, offline=["n2"])
        self.assertEqual((d.verdict, d.ops[0].method), (Verdict.CONTINUE, "failover_instance"))
        # No longer broken: closed; no longer allowed: enoperm.
        d = self.decide(inst, (), {})
        self.assertEqual((d.verdict, d.add_tag.result), (Verdict.FINISHED, RepairResult.SUCCESS))
        lowered = with_tags(drbd(), pending("failover", rid, 10, ""), P + "fix-storage")
        d = self.decide(lowered, (), {}, offline=["n2"])
        self.assertEqual(d.add_tag.result, RepairResult.ENOPERM)

    def test_own_reinstall_missing_its_reinstall_job_gets_it(self) -> None:
        # The reinstall job could not be submitted with the recreate-disks job.
        rid = repair_id("inst1", RepairType.REINSTALL, 10)
        moved = drbd(primary="n4", secondary="n5", admin_state="down")
        inst = with_tags(moved, pending("reinstall", rid, 10, "7"))
        cl = make_cluster(offline=["n2", "n3"], instances=[inst])
        st = tag_state(inst.name, inst.tags)
        d = plan_pending(cl, inst, st, (7,), {7: "success"}, NOW, ALL, True)
        self.assertEqual(d.verdict, Verdict.CONTINUE)
        # The instance was up when the repair began (recorded): started again.
        self.assertEqual(
            [(o.method, dict(o.kwargs)) for o in d.ops], [("reinstall_instance", {"start": True})]
        )
        self.assertEqual(d.touched, {"n4", "n5"})
        # Both jobs done: success with both.
        inst2 = with_tags(moved, pending("reinstall", rid, 10, "7+8"))
        d2 = self.decide(inst2, (7, 8), {7: "success", 8: "success"})
        self.assertEqual((d2.verdict, d2.add_tag.jobs), (Verdict.FINISHED, (7, 8)))

    def test_second_step_waits_while_suspended(self) -> None:
        rid = repair_id("inst1", RepairType.REINSTALL, 10)
        inst = with_tags(
            drbd(primary="n4", secondary="n5"), pending("reinstall", rid, 10, "7"), P + "suspend"
        )
        d = self.decide(inst, (7,), {7: "success"})
        self.assertEqual((d.verdict, d.ops), (Verdict.WAITING, ()))

    def test_harep_reinstall_single_job_finishes(self) -> None:
        # harep runs recreate+reinstall in one job: no second step.
        inst = with_tags(drbd(), pending("reinstall", "harep-uuid", 10, "7"))
        d = self.decide(inst, (7,), {7: "success"})
        self.assertEqual(d.verdict, Verdict.FINISHED)


# --- properties ------------------------------------------------------------------

_PROPERTY = settings(derandomize=True, max_examples=300, deadline=None, database=None)
_repair_tags = hs.builds(
    RepairTag,
    hs.sampled_from(RepairType),
    hs.sampled_from(["a", "b", "c"]),
    hs.integers(min_value=0, max_value=50),
    hs.lists(hs.integers(min_value=0, max_value=9), max_size=3).map(tuple),
    hs.none() | hs.sampled_from(RepairResult),
).map(lambda t: t.format())
_policy_tags = hs.sampled_from(
    [
        P + "fix-storage",
        P + "migrate",
        P + "failover",
        P + "reinstall",
        P + "suspend",
        P + "suspend:5",
    ]
)
_any_tags = hs.lists(_repair_tags | _policy_tags | hs.text(max_size=20), max_size=6)
_nodes = hs.sets(hs.sampled_from(["n1", "n2", "n3", "n4", "n5"]), max_size=3)


class DecisionProperties(SynchronousTestCase):
    @_PROPERTY
    @given(
        _any_tags,
        _nodes,
        _nodes,
        _nodes,
        hs.booleans(),
        hs.dictionaries(
            hs.integers(0, 9), hs.sampled_from(["running", "success", "error", "lost"])
        ),
    )
    def test_decisions_are_safe(self, tags, offline, drained, busy, is_drbd, statuses) -> None:
        inst = drbd(tags=tags) if is_drbd else plain(tags=tags)
        cl = make_cluster(offline=offline, drained=drained - offline, instances=[inst])
        free = ALL - busy
        st = tag_state(inst.name, inst.tags)
        if st.status is Status.PENDING:
            d = plan_pending(cl, inst, st, st.current.jobs, statuses, NOW, free)
        else:
            d = decide_without_jobs(cl, inst, st, NOW, free)
        # Tags written parse back; tags removed are the instance's own.
        if d.add_tag is not None:
            self.assertEqual(parse(d.add_tag.format()), d.add_tag)
        self.assertLessEqual(set(d.remove_tags), set(inst.tags))
        # Operations only touch free nodes (nodes that are not free may be
        # claimed only when the iallocator cannot pick them: offline or
        # drained), and only when a repair is started or continued.
        self.assertLessEqual({n for n in d.touched if cl.nodes[n].usable}, free)
        self.assertLessEqual(
            {
                n
                for n in d.touched
                if n in (inst.primary, inst.secondary) and not cl.nodes[n].offline
            },
            free,
        )
        if d.ops:
            self.assertIn(d.verdict, (Verdict.REPAIR, Verdict.CONTINUE))
        # A repair is only ever started within the instance's own permission.
        if d.verdict is Verdict.REPAIR:
            assert d.repair is not None
            self.assertTrue(policy_for(cl, inst, NOW).allows(d.repair.rtype))
