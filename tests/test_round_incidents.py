"""Pure incident logic: collect, cleanup, choice, evacuation plans."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.model import Cluster, Group, Instance, Node
from maintd.cluster.mond import DiagnoseReport, MondError
from maintd.daemon.state import TAG_FAILED, TAG_READY, Action, Incident, MaintState, RepairStatus
from maintd.decide import incidents as I
from maintd.decide.reason import Reason, parse_reason, report_digest


def mk_cluster(nodes: list[Node], instances: list[Instance]) -> Cluster:
    return Cluster(
        name="c",
        master="m",
        groups={"default": Group("default", "g-uuid"), "other": Group("other", "g2")},
        nodes={n.name: n for n in nodes},
        instances={i.name: i for i in instances},
    )


def nd(name: str, **kw: Any) -> Node:
    base: dict[str, Any] = dict(
        uuid=f"u-{name}", group="default", pip="127.0.0.1", mtotal=8192, mfree=8192,
        dtotal=100000, dfree=100000, ctotal=8, spindles_total=1,
    )
    base.update(kw)
    return Node(name=name, **base)


def drbd(name: str, p: str, s: str, mem: int = 1024, disk: int = 1000, **kw: Any) -> Instance:
    return Instance(name, f"u-{name}", p, (s,), "drbd", memory=mem, disk_sizes=(disk,), **kw)


def shared(name: str, p: str, mem: int = 1024, tpl: str = "rbd", **kw: Any) -> Instance:
    return Instance(name, f"u-{name}", p, (), tpl, memory=mem, **kw)


def report(status: Action, **data: Any) -> DiagnoseReport:
    raw = {"status": status.wire, "command": data.get("command"), "details": data.get("details", [])}
    return DiagnoseReport("x", status, data.get("command"), raw["details"], raw)


def incident(node: str, action: Action = Action.EVACUATE, *, uuid: str = "", **kw: Any) -> Incident:
    uuid = uuid or f"inc-{node}-{action.wire}"
    kw.setdefault("tag", TAG_READY + uuid)
    return Incident(uuid=uuid, node=f"u-{node}", node_name=node,
                    original={"status": action.wire, "details": [uuid]}, action=action, **kw)


class CollectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = mk_cluster([nd("a"), nd("b"), nd("c")], [])
        self.uuids = (f"uuid-{i}" for i in itertools.count())

    def collect(self, state: MaintState, reports: dict[str, Any]) -> I.CollectResult:
        return I.collect_reports(state, self.cluster, reports, 100.0, lambda: next(self.uuids))

    def test_table(self) -> None:
        ev = report(Action.EVACUATE, details=["disk"])
        lr = report(Action.LIVE_REPAIR, command="fix")
        ok = report(Action.OK)
        cases: list[tuple[str, dict[str, Any], list[tuple[str, Action]]]] = [
            ("ok reports make nothing", {"a": ok, "b": ok}, []),
            ("errors are skipped", {"a": MondError("a", "down"), "b": None}, []),
            ("unknown node skipped", {"zz": ev}, []),
            ("non-ok reports", {"a": ev, "b": lr, "c": ok}, [("a", Action.EVACUATE),
                                                             ("b", Action.LIVE_REPAIR)]),
        ]
        for label, reports, expect in cases:
            res = self.collect(MaintState(), reports)
            got = [(i.node_name, i.action) for i in res.created]
            self.assertEqual(got, expect, label)
            self.assertEqual(res.state.incidents, res.created, label)
            for inc in res.created:
                self.assertEqual(inc.status, RepairStatus.NOTED)
                self.assertEqual(inc.tag, TAG_READY + inc.uuid)
                self.assertEqual(inc.node, f"u-{inc.node_name}")
                self.assertEqual((inc.ctime, inc.mtime), (100.0, 100.0))

    def test_dedupe_same_report_and_new_on_change(self) -> None:
        ev = report(Action.EVACUATE, details=["disk"])
        first = self.collect(MaintState(), {"a": ev})
        again = self.collect(first.state, {"a": report(Action.EVACUATE, details=["disk"])})
        self.assertEqual(again.created, ())
        self.assertEqual(again.state, first.state)
        changed = self.collect(first.state, {"a": report(Action.EVACUATE, details=["disk", "fan"])})
        self.assertEqual(len(changed.created), 1)
        self.assertEqual(len(changed.state.incidents), 2)
        # the same report from another node is a different incident
        other = self.collect(first.state, {"b": ev})
        self.assertEqual(len(other.created), 1)

    def test_finalized_incident_still_dedupes(self) -> None:
        inc = incident("a", status=RepairStatus.COMPLETED)
        rep = DiagnoseReport("a", Action.EVACUATE, None, [], dict(inc.original))
        res = self.collect(MaintState(incidents=(inc,)), {"a": rep})
        self.assertEqual(res.created, ())

    def test_canceled_forgotten_when_node_stops_reporting(self) -> None:
        inc = incident("a", status=RepairStatus.CANCELED)
        state = MaintState(incidents=(inc,))
        same = DiagnoseReport("a", Action.EVACUATE, None, [], dict(inc.original))
        self.assertEqual(self.collect(state, {"a": same}).state, state)
        self.assertEqual(self.collect(state, {"a": MondError("a", "x")}).state, state)
        res = self.collect(state, {"a": report(Action.OK)})
        self.assertEqual(res.state.incidents, ())
        self.assertEqual([u for u, _ in res.forgotten], [inc.uuid])


class CleanupTests(SynchronousTestCase):
    def test_table(self) -> None:
        a_tagged = nd("a", tags={TAG_READY + "inc-a-evacuate"})
        cases = [
            ("completed, tag present: kept", [a_tagged], dict(status=RepairStatus.COMPLETED), (), True),
            ("completed, tag gone: forgotten", [nd("a")], dict(status=RepairStatus.COMPLETED), (), False),
            ("completed, tag job awaited: kept", [nd("a")],
             dict(status=RepairStatus.COMPLETED, jobs=(7,)), (7,), True),
            ("failed, tag gone: forgotten", [nd("a")],
             dict(status=RepairStatus.FAILED, tag=TAG_FAILED + "x"), (), False),
            ("failed, failure tag present: kept", [nd("a", tags={TAG_FAILED + "x"})],
             dict(status=RepairStatus.FAILED, tag=TAG_FAILED + "x"), (), True),
            ("pending without tag: kept", [nd("a")], dict(status=RepairStatus.PENDING), (), True),
            ("noted: kept", [nd("a")], {}, (), True),
            ("canceled: kept (collect forgets it)", [nd("a")],
             dict(status=RepairStatus.CANCELED), (), True),
            ("node left: forgotten", [nd("b")], dict(status=RepairStatus.PENDING), (), False),
        ]
        for label, nodes, kw, jobs, kept in cases:
            inc = incident("a", **kw)
            state = MaintState(incidents=(inc,), jobs=jobs)
            new, gone = I.cleanup(state, mk_cluster(nodes, []))
            self.assertEqual(bool(new.incidents), kept, label)
            self.assertEqual(bool(gone), not kept, label)


class ChoiceTests(SynchronousTestCase):
    def test_most_severe_per_node(self) -> None:
        old_ev = incident("a", Action.EVACUATE, uuid="old", ctime=1)
        new_ev = incident("a", Action.EVACUATE, uuid="new", ctime=2)
        lr = incident("a", Action.LIVE_REPAIR, uuid="lr", ctime=0)
        evf = incident("b", Action.EVACUATE_FAILOVER, uuid="evf", ctime=5)
        evb = incident("b", Action.EVACUATE, uuid="evb", ctime=1)
        done = incident("c", Action.EVACUATE_FAILOVER, uuid="done", status=RepairStatus.FAILED)
        chosen = I.most_severe([new_ev, lr, old_ev, evb, evf, done])
        self.assertEqual({k: v.uuid for k, v in chosen.items()}, {"a": "old", "b": "evf"})

    def test_free_nodes(self) -> None:
        c = mk_cluster([nd("a"), nd("b"), nd("c")], [])
        st = MaintState(incidents=(incident("a"), incident("b", status=RepairStatus.COMPLETED)))
        self.assertEqual(I.free_nodes(c, st), {"b", "c"})


class EvacuationTests(SynchronousTestCase):
    def plan(self, cluster: Cluster, node: str = "a", failover: bool = False,
             busy: set[str] | None = None, inc: set[str] | None = None) -> I.Plan:
        inc = inc if inc is not None else {node}
        free = set(cluster.nodes) - inc
        return I.plan_evacuation(cluster, node, failover=failover, available=free,
                                 busy=busy or set(), incident_nodes=inc)

    def test_drain_first(self) -> None:
        c = mk_cluster([nd("a"), nd("b")], [drbd("i1", "a", "b")])
        self.assertEqual(self.plan(c), I.Drain("a", touched=frozenset({"a"})))
        self.assertIsInstance(self.plan(mk_cluster([nd("a", offline=True), nd("b")], [])), I.Finish)

    def test_plain_drains_then_fails(self) -> None:
        for tpl in ("plain", "file", "blockdev"):
            insts = [Instance("p1", "u", "a", (), tpl), drbd("i1", "a", "b")]
            c = mk_cluster([nd("a"), nd("b")], insts)
            self.assertEqual(self.plan(c), I.Drain("a", touched=frozenset({"a"})), tpl)
            drained = mk_cluster([nd("a", drained=True), nd("b")], insts)
            plan = self.plan(drained)
            assert isinstance(plan, I.Fail)
            self.assertIn("p1", plan.reason)
            self.assertIn(tpl, plan.reason)

    def test_fail_names_every_unmovable_instance(self) -> None:
        c = mk_cluster([nd("a", offline=True), nd("b")],
                       [Instance("p1", "u", "a", (), "plain"), Instance("f1", "u2", "a", (), "file")])
        plan = self.plan(c)
        assert isinstance(plan, I.Fail)
        self.assertIn("p1 has disk template plain", plan.reason)
        self.assertIn("f1 has disk template file", plan.reason)

    def test_master_with_plain_instance_fails_at_once(self) -> None:
        c = mk_cluster([nd("a", master=True), nd("b")], [Instance("p1", "u", "a", (), "plain")])
        plan = self.plan(c)
        assert isinstance(plan, I.Fail)
        self.assertIn("p1 has disk template plain", plan.reason)

    def test_master_fails(self) -> None:
        plan = self.plan(mk_cluster([nd("a", master=True), nd("b")], []))
        assert isinstance(plan, I.Fail)
        self.assertIn("master", plan.reason)

    def test_drbd_primary_migrates_to_secondary(self) -> None:
        c = mk_cluster([nd("a", drained=True), nd("b"), nd("c")],
                       [drbd("i2", "a", "c"), drbd("i1", "a", "b"), drbd("s1", "b", "a")])
        self.assertEqual(self.plan(c), I.MovePrimary("i1", None, False, frozenset({"a", "b"})))
        self.assertEqual(self.plan(c, failover=True),
                         I.MovePrimary("i1", None, True, frozenset({"a", "b"})))
        # b busy this round: the next primary goes instead
        self.assertEqual(self.plan(c, busy={"b"}),
                         I.MovePrimary("i2", None, False, frozenset({"a", "c"})))
        plan = self.plan(c, busy={"b", "c"})
        assert isinstance(plan, I.Wait)
        self.assertIn("busy", plan.reason)

    def test_offline_node_fails_over_ignoring_consistency(self) -> None:
        c = mk_cluster([nd("a", offline=True), nd("b")], [drbd("i1", "a", "b")])
        self.assertEqual(self.plan(c), I.MovePrimary("i1", None, True, frozenset({"a", "b"}),
                                                     ignore_consistency=True))

    def test_stopped_instance_fails_over(self) -> None:
        c = mk_cluster([nd("a", drained=True), nd("b")], [drbd("i1", "a", "b", admin_state="down")])
        plan = self.plan(c)
        assert isinstance(plan, I.MovePrimary)
        self.assertTrue(plan.failover)

    def test_drbd_secondary_unusable_gets_new_secondary_first(self) -> None:
        for bad in (dict(offline=True), dict(drained=True), dict(mfree=10)):
            c = mk_cluster([nd("a", drained=True), nd("b", **bad), nd("c", dfree=500), nd("d")],
                           [drbd("i1", "a", "b")])
            self.assertEqual(self.plan(c), I.ReplaceSecondary("i1", "d", frozenset({"a", "b", "d"})),
                             bad)

    def test_two_evacuating_nodes_sharing_instances_progress(self) -> None:
        c = mk_cluster([nd("a", drained=True), nd("b", drained=True), nd("c")],
                       [drbd("i1", "a", "b"), drbd("j1", "b", "a")])
        plan = self.plan(c, "a", inc={"a", "b"})
        self.assertEqual(plan, I.ReplaceSecondary("i1", "c", frozenset({"a", "b", "c"})))

    def test_shared_to_free_node_with_most_memory(self) -> None:
        c = mk_cluster([nd("a", drained=True), nd("b", mfree=2000), nd("c", mfree=4000),
                        nd("d", mfree=9000, group="other"), nd("e", mfree=500)],
                       [shared("r1", "a", mem=1500)])
        self.assertEqual(self.plan(c), I.MovePrimary("r1", "c", False, frozenset({"a", "c"})))
        self.assertEqual(self.plan(c, busy={"c"}),
                         I.MovePrimary("r1", "b", False, frozenset({"a", "b"})))
        self.assertIsInstance(self.plan(c, busy={"b", "c"}), I.Wait)
        self.assertIsInstance(self.plan(c, inc={"a", "b", "c"}), I.Wait)
        full = mk_cluster([nd("a", drained=True), nd("b", mfree=100)], [shared("r1", "a", mem=1500)])
        plan = self.plan(full)
        assert isinstance(plan, I.Fail)
        self.assertIn("no node has room for instance r1", plan.reason)

    def test_secondaries_after_primaries(self) -> None:
        c = mk_cluster([nd("a", drained=True), nd("b"), nd("c", dfree=5000), nd("d", dfree=9000),
                        nd("e", dfree=100)],
                       [drbd("s1", "b", "a", disk=1000)])
        self.assertEqual(self.plan(c),
                         I.ReplaceSecondary("s1", "d", frozenset({"a", "b", "d"})))
        self.assertIsInstance(self.plan(c, busy={"b"}), I.Wait)
        nodisk = mk_cluster([nd("a", drained=True), nd("b"), nd("c", dfree=10)],
                            [drbd("s1", "b", "a", disk=1000)])
        plan = self.plan(nodisk)
        assert isinstance(plan, I.Fail)
        self.assertIn("secondary of s1", plan.reason)

    def test_finish_when_empty(self) -> None:
        c = mk_cluster([nd("a", drained=True), nd("b")], [drbd("x", "b", "c")])
        self.assertEqual(self.plan(c), I.Finish(frozenset({"a"})))


class DecideTests(SynchronousTestCase):
    def test_two_nodes_never_conflict(self) -> None:
        nodes = [nd("a", drained=True), nd("b", drained=True)] + [nd(f"n{i}") for i in range(4)]
        insts = [drbd("a1", "a", "n0"), drbd("a2", "a", "n1"), drbd("b1", "b", "n0"),
                 drbd("b2", "b", "n2"), shared("r1", "a"), shared("r2", "b")]
        c = mk_cluster(nodes, insts)
        st = MaintState(incidents=(incident("a", ctime=1), incident("b", ctime=2)))
        free = I.free_nodes(c, st)
        decisions, touched = I.decide(c, st, free)
        self.assertEqual([d.incident.node_name for d in decisions], ["a", "b"])
        seen: set[str] = set()
        for d in decisions:
            t = d.plan.touched
            self.assertFalse(t & seen, f"{d.plan} touches a node touched before")
            seen |= t
            if isinstance(d.plan, I.MovePrimary) and d.plan.target:
                self.assertNotIn(d.plan.target, {"a", "b"})
        self.assertEqual(seen, touched)
        self.assertEqual(decisions[0].plan, I.MovePrimary("a1", None, False, frozenset({"a", "n0"})))
        self.assertEqual(decisions[1].plan, I.MovePrimary("b2", None, False, frozenset({"b", "n2"})))

    def test_running_jobs_wait_and_live_repair(self) -> None:
        c = mk_cluster([nd("a"), nd("b"), nd("c")], [])
        lr = attrs.evolve(incident("b", Action.LIVE_REPAIR),
                          original={"status": "live-repair", "command": "fix"})
        nocmd = incident("c", Action.LIVE_REPAIR)
        st = MaintState(incidents=(incident("a", jobs=(5,)), lr, nocmd))
        decisions, _ = I.decide(c, st, I.free_nodes(c, st), running_jobs=[5])
        plans = {d.incident.node_name: d.plan for d in decisions}
        self.assertIsInstance(plans["a"], I.Wait)
        self.assertEqual(plans["b"], I.Repair("fix", frozenset({"b"})))
        assert isinstance(plans["c"], I.Fail)
        self.assertIn("no repair command", plans["c"].reason)


class UpdateTests(SynchronousTestCase):
    def test_job_then_fail_and_operator_actions(self) -> None:
        inc = incident("a")
        st = MaintState(incidents=(inc,))
        st = I.with_job(st, inc, 11, 5.0)
        cur = st.incident(inc.uuid)
        assert cur is not None
        self.assertEqual((cur.status, cur.jobs, st.jobs, cur.serial_no), (RepairStatus.PENDING, (11,), (11,), 2))
        st2 = I.failed(st, cur, "boom", 12, 6.0)
        f = st2.incident(inc.uuid)
        assert f is not None
        self.assertEqual((f.status, f.tag, f.reason, f.jobs), (RepairStatus.FAILED, TAG_FAILED + inc.uuid, "boom", (11, 12)))
        st3 = I.finished(st, cur, 13, 7.0)
        done = st3.incident(inc.uuid)
        assert done is not None
        self.assertEqual((done.status, done.tag), (RepairStatus.COMPLETED, TAG_READY + inc.uuid))
        canceled = I.cancel_incident(st, inc.uuid, 8.0).incident(inc.uuid)
        assert canceled is not None
        self.assertEqual(canceled.status, RepairStatus.CANCELED)
        with self.assertRaises(I.IncidentError):
            I.cancel_incident(st2, inc.uuid, 8.0)
        with self.assertRaises(I.IncidentError):
            I.forget_incident(st, "nope")
        self.assertEqual(I.forget_incident(st, inc.uuid).incidents, ())
        inc = attrs.evolve(inc, uuid="6b5c1f9e-0000-4000-8000-00000000000a")
        self.assertEqual(parse_reason(I.job_reason(inc)),
                         Reason("incident", inc.uuid, report_digest(inc.node, inc.original)))


class FlappingTests(SynchronousTestCase):
    """drop_unreported and cap_per_node (issue 16 H)."""

    def setUp(self) -> None:
        self.cluster = mk_cluster([nd("a"), nd("b")], [])

    def test_only_noted_incidents_without_jobs_that_are_no_longer_reported_go(self) -> None:
        noted = incident("a", uuid="noted")
        with_job = incident("a", uuid="job", jobs=(7,))
        pending = incident("a", uuid="pending", status=RepairStatus.PENDING)
        failed = incident("a", uuid="failed", status=RepairStatus.FAILED)
        still = incident("b", uuid="still")
        state = MaintState(incidents=(noted, with_job, pending, failed, still))
        same_b = DiagnoseReport("b", Action.EVACUATE, None, [], dict(still.original))
        other = report(Action.EVACUATE, details=["changed"])
        new, dropped = I.drop_unreported(state, self.cluster, {"a": other, "b": same_b})
        self.assertEqual([(i.uuid, why) for i, why in dropped],
                         [("noted", "a no longer reports it")])
        self.assertEqual([i.uuid for i in new.incidents], ["job", "pending", "failed", "still"])
        # an unreachable node, an Ok report, a node outside the cluster
        for reports in ({"a": MondError("a", "down")}, {"a": None}, {}):
            self.assertEqual(I.drop_unreported(state, self.cluster, reports), (state, []))
        new, dropped = I.drop_unreported(state, self.cluster, {"a": report(Action.OK)})
        self.assertEqual([i.uuid for i, _ in dropped], ["noted"])

    def test_cap_refuses_only_new_incidents_beyond_the_limit(self) -> None:
        olds = tuple(incident("a", uuid=f"old{n}") for n in range(3))
        new_a = [incident("a", uuid=f"new{n}") for n in range(2)]
        new_b = incident("b", uuid="newb")
        state = MaintState(incidents=(*olds, *new_a, new_b))
        got, kept, refused = I.cap_per_node(state, [*new_a, new_b], 4)
        self.assertEqual([i.uuid for i in kept], ["new0", "newb"])
        self.assertEqual([i.uuid for i in refused], ["new1"])
        self.assertEqual([i.uuid for i in got.incidents],
                         ["old0", "old1", "old2", "new0", "newb"])
        # already over the limit (a lower setting): the old ones stay, nothing new
        got, kept, refused = I.cap_per_node(state, [*new_a, new_b], 2)
        self.assertEqual([i.uuid for i in got.incidents], ["old0", "old1", "old2", "newb"])
        self.assertEqual(I.cap_per_node(state, [], 1), (state, [], []))
