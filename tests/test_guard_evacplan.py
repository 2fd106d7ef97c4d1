"""Plan before drain (maintd.decide.evacplan) and the round gate
(maintd.decide.guardrails.round_gate), with plain values and hypothesis.

The property tests drive whole evacuations on random clusters and random
report sets with the pure pieces only (gate -> decide -> apply each job to
the model at once), and check after every round: never more nodes under
evacuation than the budget, never a job for an incident on the master, and
never a node newly failing N+1 (checked independently of the planner: per
secondary node, the memory of the instances it would have to take over
from any one primary must fit in its free memory).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.model import Cluster, Group, Instance, Node
from maintd.daemon.state import Action, Incident, MaintState, RepairStatus
from maintd.decide import evacplan as E
from maintd.decide import guardrails as G
from maintd.decide import incidents as I


def node(name: str, mem: int = 8192, disk: int = 100_000, **kw: Any) -> Node:
    base: dict[str, Any] = dict(uuid=f"u-{name}", group="default", mtotal=mem, mfree=mem,
                                dtotal=disk, dfree=disk, ctotal=16, spindles_total=1)
    base.update(kw)
    return Node(name=name, **base)


def drbd(name: str, p: str, s: str, mem: int = 1024, disk: int = 1000) -> Instance:
    return Instance(name, f"u-{name}", p, (s,), "drbd", memory=mem, disk_sizes=(disk,))


def shared(name: str, p: str, mem: int = 1024) -> Instance:
    return Instance(name, f"u-{name}", p, (), "rbd", memory=mem, disk_sizes=(1000,))


def cluster(nodes: list[Node], instances: list[Instance], master: str = "m") -> Cluster:
    """A consistent snapshot: free memory and disk follow the instances."""
    used_mem: dict[str, int] = defaultdict(int)
    used_disk: dict[str, int] = defaultdict(int)
    for i in instances:
        if i.running:
            used_mem[i.primary] += i.memory
        if i.is_drbd:
            used_disk[i.primary] += i.disk
            for s in i.secondaries:
                used_disk[s] += i.disk
    fixed = {n.name: attrs.evolve(n, mfree=n.mtotal - n.mnode - used_mem[n.name],
                                  dfree=n.dtotal - used_disk[n.name],
                                  master=n.name == master) for n in nodes}
    return Cluster(name="c", master=master, groups={"default": Group("default", "g")},
                   nodes=fixed, instances={i.name: i for i in instances})


def n1_failures(c: Cluster) -> set[str]:
    """Usable nodes that could not take over the instances of some primary peer."""
    need: dict[tuple[str, str], int] = defaultdict(int)
    for i in c.instances.values():
        if i.is_drbd and i.running and i.auto_balance:
            for s in i.secondaries:
                need[(s, i.primary)] += i.memory
    out = set()
    for (s, _p), mem in need.items():
        n = c.nodes[s]
        if n.usable and n.mfree < mem:
            out.add(s)
    return out


def apply(c: Cluster, plan: I.Plan) -> Cluster:
    """Carry out one job on the model, as Ganeti would."""
    nodes = dict(c.nodes)
    insts = dict(c.instances)

    def mem(name: str, delta: int) -> None:
        nodes[name] = attrs.evolve(nodes[name], mfree=nodes[name].mfree + delta)

    def disk(name: str, delta: int) -> None:
        nodes[name] = attrs.evolve(nodes[name], dfree=nodes[name].dfree + delta)

    match plan:
        case I.Drain(node=n):
            assert not nodes[n].master, "drain of the master"
            nodes[n] = attrs.evolve(nodes[n], drained=True)
        case I.MovePrimary(instance=name, target=target):
            i = insts[name]
            new = target or i.secondary
            assert new is not None
            secs = (i.primary,) if target is None else i.secondaries
            if i.running:
                mem(i.primary, i.memory)
                mem(new, -i.memory)
            insts[name] = attrs.evolve(i, primary=new, secondaries=secs)
        case I.ReplaceSecondary(instance=name, new_secondary=t):
            i = insts[name]
            disk(i.secondaries[0], i.disk)
            disk(t, -i.disk)
            insts[name] = attrs.evolve(i, secondaries=(t,))
    return attrs.evolve(c, nodes=nodes, instances=insts)


def incident(node_name: str, n: int, action: Action = Action.EVACUATE) -> Incident:
    return Incident(uuid=f"inc-{n:03d}", node=f"u-{node_name}", node_name=node_name,
                    original={"n": n}, action=action, ctime=float(n))


def one_round(c: Cluster, state: MaintState, budget: int, now: float,
              breaker: G.Breaker | None = None,
              pause: G.Pause | None = None) -> tuple[Cluster, MaintState, list[I.Decision]]:
    """gate + decide + every job carried out at once (as the handle step does)."""
    chosen = [i for i in I.most_severe(state.incidents).values() if i.node_name in c.nodes]
    planner = E.Planner(c, I.incident_nodes(state))
    gate = G.round_gate(chosen, master=c.master, budget=budget, breaker=breaker or G.Breaker(),
                        pause=pause, planner=planner)

    def gated(inc: Incident) -> I.Plan | None:
        r = gate.waits.get(inc.uuid)
        return I.Wait(r) if r is not None else None

    def plan_evac(cluster: Cluster, node_name: str, **kw: Any) -> I.Plan:
        return E.next_step(cluster, gate.plans.get(node_name) or planner.plan(node_name), **kw)

    decisions, _ = I.decide(c, state, I.free_nodes(c, state), (), gate=gated,
                            plan_evac=plan_evac)
    for d in decisions:
        inc = state.incident(d.incident.uuid)
        assert inc is not None
        if isinstance(d.plan, I.Finish):
            state = I.finished(state, inc, None, now)
        elif isinstance(d.plan, I.Fail):
            state = I.failed(state, inc, d.plan.reason, None, now)
        elif isinstance(d.plan, I.Drain | I.MovePrimary | I.ReplaceSecondary):
            c = apply(c, d.plan)
            state = I.with_job(state, inc, 1, now)
            state = attrs.evolve(state, jobs=())
    return c, state, decisions


def pending_evacuations(state: MaintState) -> int:
    return len(G.under_evacuation(state.incidents))


class PlanTests(SynchronousTestCase):
    def test_order_of_moves(self) -> None:
        c = cluster([node("m"), node("a"), node("b"), node("c"), node("d")],
                    [drbd("i1", "a", "b"), shared("r1", "a"), drbd("s1", "c", "a")])
        plan = E.plan_evacuations(c, ["a"])["a"]
        self.assertTrue(plan.feasible, plan.reason)
        kinds = [(s.instance, s.kind) for s in plan.steps]
        # primaries first (DRBD to its secondary, shared storage to a node),
        # then new secondaries for what is left as a secondary on the node
        self.assertEqual(kinds, [("i1", E.TO_SECONDARY), ("r1", E.TO_NODE),
                                 ("s1", E.NEW_SECONDARY), ("i1", E.NEW_SECONDARY)])
        for s in plan.steps:
            self.assertNotEqual(s.target, "a")

    def test_full_cluster_names_what_has_no_room(self) -> None:
        # the other nodes lack the disk for a new secondary of inst-12
        nodes = [node(n, disk=20_000) for n in ("m", "n1", "n2", "n7")]
        insts = [drbd("inst-12", "n1", "n7", disk=10_000), drbd("big", "n2", "m", disk=15_000)]
        c = cluster(nodes, insts)
        plan = E.plan_evacuations(c, ["n7"])["n7"]
        self.assertFalse(plan.feasible)
        assert plan.reason is not None
        self.assertTrue(plan.reason.startswith("cannot evacuate n7: no room for the secondary "
                                               "of inst-12 (1024 MiB memory, 10000 MiB disk)"),
                        plan.reason)
        kw: dict[str, Any] = dict(failover=False, available={"m", "n1", "n2"}, busy=set(),
                                  incident_nodes={"n7"})
        self.assertEqual(E.next_step(c, plan, **kw), I.Wait(plan.reason), "no drain")

    def test_never_a_new_n1_failure(self) -> None:
        # b has the most free memory and could hold r1, but then it could no
        # longer take over x1 from c (N+1): the plan picks d
        nodes = [node("m", mem=2048), node("a"), node("b", mem=6000), node("c", mem=4000),
                 node("d", mem=6000)]
        insts = [shared("r1", "a", mem=3200), drbd("x1", "c", "b", mem=3000),
                 drbd("y1", "d", "c", mem=1000)]
        c = cluster(nodes, insts)
        self.assertEqual(n1_failures(c), set())
        [step] = E.plan_evacuations(c, ["a"])["a"].steps
        self.assertEqual((step.kind, step.target), (E.TO_NODE, "d"))
        after = apply(c, I.MovePrimary("r1", "d", False))
        self.assertEqual(n1_failures(after), set())
        self.assertEqual(n1_failures(apply(c, I.MovePrimary("r1", "b", False))), {"b"},
                         "the fixture really has the trap")

    def test_a_node_that_can_exactly_take_over_its_peer_takes_nothing_more(self) -> None:
        # s has exactly the 2048 MiB free it needs to take over x1 and x2 from
        # p: it does not fail N+1 (htools would count it as failing already
        # and let more memory onto it).  Evacuating a must not fail d1 over to
        # s: a new secondary first (t), then the primary moves there.
        nodes = [node("m"), node("p"), node("s", mem=4096), node("a"), node("t")]
        insts = [shared("big", "s", mem=2048), drbd("x1", "p", "s", mem=1024),
                 drbd("x2", "p", "s", mem=1024), drbd("d1", "a", "s", mem=512)]
        c = cluster(nodes, insts)
        self.assertEqual(c.nodes["s"].mfree, 2048)
        self.assertEqual(n1_failures(c), set())
        self.assertEqual(n1_failures(apply(c, I.MovePrimary("d1", None, True))), {"s"},
                         "the fixture really has the trap")
        steps = E.plan_evacuations(c, ["a"])["a"].steps
        self.assertNotIn(E.Step("d1", E.TO_SECONDARY), steps[:1])
        self.assertEqual(steps[0].kind, E.NEW_SECONDARY)
        self.assertNotEqual(steps[0].target, "s")

    def test_within_the_vcpu_ratio(self) -> None:
        nodes = [node("m"), node("a"), node("b", ctotal=1)]
        many = Instance("cpu", "u-cpu", "a", (), "rbd", memory=512, vcpus=8)
        c = cluster(nodes, [many])
        plan = E.plan_evacuations(c, ["a"])["a"]
        # b has one CPU (vCPU ratio 4: at most 4 vCPUs); m has 16: the plan avoids b
        self.assertEqual([s.target for s in plan.steps], ["m"])
        c2 = cluster([node("m", ctotal=1), node("a"), node("b", ctotal=1)], [many])
        self.assertIn("cannot evacuate a: no room for instance cpu",
                      E.plan_evacuations(c2, ["a"])["a"].reason or "")

    def test_joint_plans_share_the_room(self) -> None:
        # one spare node with room for one evacuation only
        nodes = [node("m", mem=1024), node("a", mem=4096), node("b", mem=4096),
                 node("spare", mem=4096)]
        insts = [shared("ra", "a", mem=3000), shared("rb", "b", mem=3000)]
        c = cluster(nodes, insts)
        plans = E.plan_evacuations(c, ["a", "b"])
        self.assertTrue(plans["a"].feasible)
        self.assertFalse(plans["b"].feasible, "b's plan sees a's moves")
        self.assertTrue(E.plan_evacuations(c, ["b"])["b"].feasible)

    def test_unmovable_drains_then_fails(self) -> None:
        c = cluster([node("m"), node("a"), node("b")],
                    [Instance("p1", "u-p1", "a", (), "plain", memory=512)])
        plan = E.Planner(c).plan("a")
        self.assertTrue(plan.feasible)
        self.assertTrue(plan.takes_slot)
        kw: dict[str, Any] = dict(failover=False, available={"b", "m"}, busy=set(),
                                  incident_nodes={"a"})
        self.assertIsInstance(E.next_step(c, plan, **kw), I.Drain)
        drained = attrs.evolve(c, nodes={**c.nodes, "a": attrs.evolve(c.nodes["a"], drained=True)})
        plan = E.Planner(drained).plan("a")
        self.assertFalse(plan.takes_slot, "nothing would move: no slot")
        self.assertIn("p1 has disk template plain", E.next_step(drained, plan, **kw).reason)


class GateTests(SynchronousTestCase):
    def setUp(self) -> None:
        names = ["m", *(f"n{k}" for k in range(1, 9))]
        insts = [shared(f"r{k}", f"n{k}", mem=512) for k in range(1, 9)]
        self.c = cluster([node(n) for n in names], insts)

    def test_budget_oldest_and_most_severe_first(self) -> None:
        incs = [incident("n1", 5), incident("n2", 1), incident("n3", 9, Action.EVACUATE_FAILOVER),
                incident("n4", 2)]
        state = MaintState(incidents=tuple(incs))
        c, state, decisions = one_round(self.c, state, budget=2, now=10)
        started = {i.node_name for i in state.incidents if i.status == RepairStatus.PENDING}
        self.assertEqual(started, {"n3", "n2"}, "most severe, then oldest")
        waits = {d.incident.node_name: d.plan for d in decisions if isinstance(d.plan, I.Wait)}
        self.assertEqual(set(waits), {"n1", "n4"})
        self.assertIn("waiting for an evacuation slot: 2 of at most 2", waits["n1"].reason)

    def test_master_submits_nothing(self) -> None:
        state = MaintState(incidents=(incident("m", 1), incident("n1", 2, Action.LIVE_REPAIR)))
        _c, state, decisions = one_round(self.c, state, budget=5, now=10)
        by = {d.incident.node_name: d.plan for d in decisions}
        self.assertIsInstance(by["m"], I.Wait)
        self.assertIn("move the master role first", by["m"].reason)  # type: ignore[union-attr]
        self.assertEqual(state.incident("inc-001").status, RepairStatus.NOTED)  # type: ignore[union-attr]
        # the master role moves to n5: the incident proceeds
        moved = attrs.evolve(self.c, master="n5", nodes={
            **self.c.nodes, "m": attrs.evolve(self.c.nodes["m"], master=False),
            "n5": attrs.evolve(self.c.nodes["n5"], master=True)})
        _c, state, decisions = one_round(moved, state, budget=5, now=11)
        self.assertIsInstance({d.incident.node_name: d.plan for d in decisions}["m"], I.Drain)

    def test_breaker_holds_new_work_only(self) -> None:
        running = attrs.evolve(incident("n1", 1), status=RepairStatus.PENDING)
        state = MaintState(incidents=(running, incident("n2", 2),
                                      incident("n3", 3, Action.LIVE_REPAIR)))
        tripped = G.Breaker(tripped=True, reporting=9, threshold=4)
        _c, _s, decisions = one_round(self.c, state, budget=5, now=10, breaker=tripped)
        by = {d.incident.node_name: d.plan for d in decisions}
        self.assertIsInstance(by["n1"], I.Drain, "work in progress goes on")
        for n in ("n2", "n3"):
            self.assertIsInstance(by[n], I.Wait)
            self.assertIn("storm breaker tripped", by[n].reason)  # type: ignore[union-attr]

    def test_pause_holds_noted_incidents(self) -> None:
        state = MaintState(incidents=(incident("n1", 1),))
        pause = G.Pause("upgrade", None, "tag")
        _c, _s, decisions = one_round(self.c, state, budget=5, now=10, pause=pause)
        [d] = decisions
        self.assertIsInstance(d.plan, I.Wait)
        self.assertIn("maintd:pause", d.plan.reason)  # type: ignore[union-attr]

    def test_every_move_is_checked_again_on_each_snapshot(self) -> None:
        c = cluster([node("m", mem=1024), node("a"), node("b"), node("c")],
                    [shared("r1", "a", mem=3000), shared("r2", "a", mem=3000)])
        state = MaintState(incidents=(incident("a", 1),))
        c, state, decisions = one_round(c, state, budget=1, now=10)
        self.assertIsInstance(decisions[0].plan, I.Drain)
        c, state, decisions = one_round(c, state, budget=1, now=11)
        self.assertIsInstance(decisions[0].plan, I.MovePrimary)
        # meanwhile someone else fills b and c: the next move no longer fits
        full = {n: attrs.evolve(c.nodes[n], mfree=1000) for n in ("b", "c")}
        c = attrs.evolve(c, nodes={**c.nodes, **full})
        c2, state, decisions = one_round(c, state, budget=1, now=12)
        [d] = decisions
        self.assertIsInstance(d.plan, I.Wait)
        self.assertIn("cannot evacuate a: no room for instance", d.plan.reason)  # type: ignore[union-attr]
        self.assertEqual(c2, c, "no job")
        self.assertEqual(state.incidents[0].status, RepairStatus.PENDING, "still in progress")

    def test_failing_at_once_needs_no_slot(self) -> None:
        # n1 is drained already and holds a plain instance: its incident fails
        # at once, whatever the budget; n2 (older) has the only slot
        c = cluster([node("m"), node("n1", drained=True), node("n2"), node("n3")],
                    [Instance("p1", "u-p1", "n1", (), "plain", memory=512), shared("r2", "n2")])
        state = MaintState(incidents=(incident("n2", 1), incident("n1", 2)))
        _c, state, decisions = one_round(c, state, budget=1, now=10)
        by = {d.incident.node_name: d.plan for d in decisions}
        self.assertIsInstance(by["n2"], I.Drain)
        self.assertIsInstance(by["n1"], I.Fail)
        self.assertTrue(E.Planner(c).takes_slot("n2"))
        self.assertFalse(E.Planner(c).takes_slot("n1"))

    def test_infeasible_takes_no_slot(self) -> None:
        c = cluster([node("m", mem=1024), node("a", mem=8192), node("b"), node("c")],
                    [shared("huge", "a", mem=9000), shared("rb", "b")])
        state = MaintState(incidents=(incident("a", 1), incident("b", 2)))
        _c, state, decisions = one_round(c, state, budget=1, now=10)
        by = {d.incident.node_name: d.plan for d in decisions}
        self.assertIn("cannot evacuate a: no room for instance huge",
                      by["a"].reason)  # type: ignore[union-attr]
        self.assertIsInstance(by["b"], I.Drain, "the slot goes to the next one")


# --------------------------------------------------------------------------
# properties


@st.composite
def random_cluster(draw: Any) -> tuple[Cluster, list[str]]:
    n = draw(st.integers(4, 9))
    names = [f"n{k}" for k in range(n)]
    mems = [draw(st.sampled_from([4096, 8192, 16384])) for _ in names]
    nodes = [node(nm, mem=m, disk=draw(st.sampled_from([20_000, 60_000]))) for nm, m in
             zip(names, mems, strict=True)]
    free = dict(zip(names, mems, strict=True))
    disk = {nd.name: nd.dtotal for nd in nodes}
    insts: list[Instance] = []
    for k in range(draw(st.integers(0, 3 * n))):
        mem = draw(st.sampled_from([512, 1024, 2048, 3072]))
        p = draw(st.sampled_from(names))
        if free[p] < mem:
            continue
        if draw(st.booleans()):
            s = draw(st.sampled_from([x for x in names if x != p]))
            size = draw(st.sampled_from([1000, 5000, 10_000]))
            if disk[p] < size or disk[s] < size:
                continue
            disk[p] -= size
            disk[s] -= size
            insts.append(drbd(f"i{k}", p, s, mem=mem, disk=size))
        else:
            insts.append(shared(f"i{k}", p, mem=mem))
        free[p] -= mem
    failing = draw(st.lists(st.sampled_from(names), unique=True, max_size=n))
    return cluster(nodes, insts, master=names[0]), failing


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(random_cluster(), st.integers(0, 3))
    def test_bounded_blast_radius(self, drawn: tuple[Cluster, list[str]], budget: int) -> None:
        c, failing = drawn
        counter = itertools.count()
        state = MaintState(incidents=tuple(
            incident(n, next(counter), Action.EVACUATE_FAILOVER if k % 3 == 0 else Action.EVACUATE)
            for k, n in enumerate(failing)))
        master_incidents = {i.uuid for i in state.incidents if i.node_name == c.master}
        baseline = n1_failures(c)
        for rnd in range(40):
            before = c
            c, state, decisions = one_round(c, state, budget, now=float(100 + rnd))
            self.assertLessEqual(pending_evacuations(state), budget)
            for d in decisions:
                if d.incident.uuid in master_incidents:
                    self.assertIsInstance(d.plan, I.Wait, "a job for the master's incident")
            # our moves never make a node fail N+1 that did not before
            new = n1_failures(c) - n1_failures(before) - baseline
            self.assertEqual(new, set(), [I.describe(d.plan) for d in decisions])
            for nd in c.nodes.values():
                self.assertGreaterEqual(nd.dfree, 0, nd.name)
                self.assertGreaterEqual(nd.mfree, 0, nd.name)
            if not any(isinstance(d.plan, I.Drain | I.MovePrimary | I.ReplaceSecondary |
                                  I.Finish | I.Fail) for d in decisions):
                break
        # whatever is still noted says why
        for inc in state.incidents:
            if inc.status == RepairStatus.NOTED and budget > 0:
                chosen = [i for i in I.most_severe(state.incidents).values()]
                gate = G.round_gate(chosen, master=c.master, budget=budget,
                                    breaker=G.Breaker(), pause=None,
                                    planner=E.Planner(c, I.incident_nodes(state)))
                self.assertIn(inc.uuid, gate.waits)


class RobustnessTests(SynchronousTestCase):
    def test_a_snapshot_the_model_cannot_take_is_a_reason_not_a_crash(self) -> None:
        # an instance whose primary is not among the nodes (the loader skips
        # such objects; a planner bug must not end every round either)
        c = cluster([node("m"), node("a"), node("b")], [shared("r1", "a")])
        c = attrs.evolve(c, instances={**c.instances, "ghost": shared("ghost", "gone")})
        plan = E.Planner(c).plan("a")
        self.assertFalse(plan.feasible)
        self.assertIn("cannot plan the evacuation of a: KeyError", plan.reason or "")
