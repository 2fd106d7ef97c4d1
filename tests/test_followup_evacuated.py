"""The evacuated list: who joins it (handle, harep), who leaves it (the prune step).

Pure decisions of :mod:`maintd.decide.evacuation`, then the steps with fakes.
The end-to-end run against the simulator is in ``test_followup_evacuated_sim``.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.mond import Action, MondError
from maintd.daemon.state import MaintState
from maintd.daemon.steps import default_steps
from maintd.daemon.steps.collect import collect_step
from maintd.daemon.steps.evacuated import evacuated_step
from maintd.daemon.steps.handle import handle_step
from maintd.daemon.steps.jobs import jobs_step
from maintd.daemon.steps.reconcile import reconcile_step
from maintd.daemon.steps.snapshot import snapshot_step
from maintd.decide import evacuation
from maintd.decide.balance.gen import generate_cluster
from maintd.decide.reason import format_reason
from tests import test_reconcile_logic as L
from tests.test_balance_step import make_ctx
from tests.test_balance_step import run as run_balance
from tests.test_round_incidents import drbd, incident, mk_cluster, nd
from tests.test_round_steps import Cfg, Ctx, FakeMond, FakeRapi, rep


def cluster(**flags: dict[str, Any]) -> Any:
    nodes = [nd(n, pip=f"127.0.0.{i}", **flags.get(n, {})) for i, n in enumerate("abcd", 1)]
    insts = [
        drbd("x1", "a", "b", hypervisor="xen-pvm"),
        drbd("x2", "a", "c", hypervisor="xen-hvm"),
        drbd("k1", "a", "d", hypervisor="kvm"),
        drbd("x3", "c", "d", hypervisor="xen-pvm"),
    ]
    return mk_cluster(nodes, insts)


class JoinTests(SynchronousTestCase):
    def test_xen_off_offline_or_drained_joins(self) -> None:
        for flag in ("offline", "drained"):
            c = cluster(a={flag: True})
            self.assertEqual(
                [n for n in ("x1", "x2", "k1", "x3") if evacuation.joins(c, n)], ["x1", "x2"], flag
            )

    def test_online_primary_or_unknown_instance_does_not_join(self) -> None:
        c = cluster()
        self.assertFalse(evacuation.joins(c, "x1"))
        self.assertFalse(evacuation.joins(cluster(a={"offline": True}), "nosuch"))

    def test_only_moving_calls_join(self) -> None:
        c = cluster(a={"offline": True})
        for method in ("failover_instance", "migrate_instance", "recreate_disks"):
            self.assertTrue(evacuation.joins_by_method(c, "x1", method), method)
        for method in ("shutdown_instance", "reinstall_instance", "replace_disks"):
            self.assertFalse(evacuation.joins_by_method(c, "x1", method), method)

    def test_added_keeps_order_without_duplicates(self) -> None:
        s = MaintState(evacuated=("x1",), jobs=(4,))
        new = evacuation.added(s, ["x2", "x1", "x2"])
        self.assertEqual(new.evacuated, ("x1", "x2"))
        self.assertEqual(new.jobs, (4,))
        self.assertIs(evacuation.added(new, ["x1"]), new)


class PruneTests(SynchronousTestCase):
    def test_nodes_to_ask_are_online_primaries_of_listed(self) -> None:
        c = cluster(a={"offline": True})
        names = [n.name for n in evacuation.nodes_to_ask(c, ["x1", "x3", "gone"])]
        self.assertEqual(names, ["c"])  # x1's primary a is offline; gone is unknown
        drained = cluster(a={"drained": True})
        self.assertEqual([n.name for n in evacuation.nodes_to_ask(drained, ["x1"])], ["a"])

    def test_reported_on_primary_leaves(self) -> None:
        c = cluster()
        self.assertEqual(evacuation.remaining(c, ["x1", "x3"], {"c": ["x3"]}), ("x1",))

    def test_reported_elsewhere_or_unasked_stays(self) -> None:
        c = cluster()
        self.assertEqual(evacuation.remaining(c, ["x3"], {"a": ["x3"]}), ("x3",))
        self.assertEqual(evacuation.remaining(c, ["x3"], {}), ("x3",))

    def test_gone_instances_leave(self) -> None:
        c = cluster()
        self.assertEqual(evacuation.remaining(c, ["gone", "x1", "x1"], {}), ("x1",))


class XenMond(FakeMond):
    """A mond fake answering xen-cpu-avg-load from ``xen`` (node -> names or error)."""

    def __init__(self, xen: dict[str, Any]) -> None:
        super().__init__({})
        self.xen = xen

    async def report(self, node: Any, category: str, name: str) -> dict[str, Any]:
        assert (category, name) == ("default", "xen-cpu-avg-load")
        got = self.xen.get(node.name, [])
        if isinstance(got, Exception):
            raise got
        return {"name": name, "data": {n: 0.5 for n in got}}

    async def gather(self, nodes: Any, fn: Any) -> dict[str, Any]:
        self.asked = [n.name for n in nodes]
        out: dict[str, Any] = {}
        for n in nodes:
            try:
                out[n.name] = await fn(n)
            except MondError as e:
                out[n.name] = e
        return out


class PruneStepTests(SynchronousTestCase):
    def step(self, ctx: Ctx) -> None:
        self.successResultOf(defer.Deferred.fromCoroutine(evacuated_step(ctx)))

    def ctx(self, evac: tuple[str, ...], mond: Any, **flags: dict[str, Any]) -> Ctx:
        c = cluster(**flags)
        ctx = Ctx(MaintState(evacuated=evac), FakeRapi(c), mond)
        ctx.cluster = c
        return ctx

    def test_empty_list_asks_nobody(self) -> None:
        mond = XenMond({})
        ctx = self.ctx((), mond)
        self.step(ctx)
        self.assertEqual((mond.asked, ctx.commits), ([], 0))

    def test_data_back_removes_gone_removes_rest_stays(self) -> None:
        mond = XenMond({"a": ["x1"], "c": []})
        ctx = self.ctx(("x1", "gone", "x3"), mond)
        self.step(ctx)
        self.assertEqual(mond.asked, ["a", "c"])
        self.assertEqual(ctx.state.evacuated, ("x3",))
        self.assertEqual(ctx.commits, 1)
        self.assertEqual(ctx.notes, [{"step": "evacuated", "removed": ["x1", "gone"]}])

    def test_mond_error_keeps_the_list_and_logs_once(self) -> None:
        mond = XenMond({"a": MondError("a", "connection refused"),
                        "c": MondError("c", "timeout")})
        ctx = self.ctx(("x1", "x3"), mond)
        logged: list[dict[str, Any]] = []

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.step(ctx)
        self.assertEqual((ctx.state.evacuated, ctx.commits), (("x1", "x3"), 0))
        mine = [e for e in logged if "evacuated list" in e.get("log_format", "")]
        self.assertEqual(len(mine), 1)
        self.assertIn("mond on a: connection refused", mine[0]["errors"])
        self.assertIn("mond on c: timeout", mine[0]["errors"])

    def test_offline_primary_is_not_asked_and_keeps(self) -> None:
        mond = XenMond({"a": ["x1"]})
        ctx = self.ctx(("x1",), mond, a={"offline": True})
        self.step(ctx)
        self.assertEqual((mond.asked, ctx.state.evacuated), ([], ("x1",)))

    def test_without_mond_only_gone_leave(self) -> None:
        ctx = self.ctx(("x1", "gone"), None)
        self.step(ctx)
        self.assertEqual(ctx.state.evacuated, ("x1",))

    def test_runs_before_the_steps_that_add(self) -> None:
        names = [s.__name__ for s in default_steps(None)]
        at = names.index("evacuated_step")
        for later in ("handle_step", "harep_step", "balance_step"):
            self.assertLess(at, names.index(later), later)


@attrs.define
class RecCtx(Ctx):
    """A context that keeps every committed state."""

    history: list[MaintState] = attrs.field(factory=list)

    async def commit(self, new: MaintState) -> None:
        self.history.append(new)
        await super().commit(new)


class HandleJoinTests(SynchronousTestCase):
    """An incident evacuation's primary moves: Xen instances join in the job's commit."""

    def test_xen_primary_joins_kvm_does_not(self) -> None:

        c = cluster(a={"drained": True})
        rapi = FakeRapi(c)
        mond = FakeMond({"a": rep("a", Action.EVACUATE)})
        ctx = RecCtx(MaintState(), rapi, mond)
        rapi.ctx = ctx
        moved: list[str] = []
        for _ in range(3):
            ctx.notes = []
            ctx.commits = 0
            for step in (jobs_step, snapshot_step, collect_step, handle_step):
                self.successResultOf(defer.Deferred.fromCoroutine(step(ctx)))
            name = rapi.calls[-1][1]
            moved.append(name)
            # the instance joined (or not) in the very commit that recorded the job
            job = ctx.state.jobs[-1]
            first = next(st for st in ctx.history if job in st.jobs)
            self.assertEqual(name in first.evacuated, name.startswith("x"), name)
            insts = dict(rapi.cluster.instances)
            inst = insts[name]
            insts[name] = attrs.evolve(inst, primary=inst.secondaries[0],
                                       secondaries=(inst.primary,))
            rapi.cluster = attrs.evolve(rapi.cluster, instances=insts)
        self.assertEqual(sorted(moved), ["k1", "x1", "x2"])
        self.assertEqual(sorted(ctx.state.evacuated), ["x1", "x2"])

    def test_dry_run_adds_nothing(self) -> None:

        c = cluster(a={"drained": True})

        ctx = Ctx(MaintState(incidents=(incident("a"),)), FakeRapi(c), None, config=Cfg(True))
        ctx.cluster = c
        ctx.free_nodes = {"b", "c", "d"}
        self.successResultOf(defer.Deferred.fromCoroutine(handle_step(ctx)))
        self.assertTrue(any("plan" in n for n in ctx.notes))
        self.assertEqual(ctx.state.evacuated, ())
        self.assertEqual(ctx.commits, 0)


class BalanceJoinTests(SynchronousTestCase):
    """A balancing move of a Xen instance off a drained node joins in its first job's commit."""

    def test_moves_off_drained_node_join(self) -> None:

        base = generate_cluster(6, 30, seed=5)
        drained = sorted(base.nodes)[0]
        nodes = {**base.nodes, drained: attrs.evolve(base.nodes[drained], drained=True)}
        insts = {n: attrs.evolve(i, hypervisor="xen-pvm") for n, i in base.instances.items()}
        c = attrs.evolve(base, nodes=nodes, instances=insts)
        on_drained = {n for n, i in insts.items() if i.primary == drained}
        self.assertTrue(on_drained)
        ctx = make_ctx(c, balance=True)
        committed: list[MaintState] = []
        ctx.store = _Store(committed)
        run_balance(ctx)
        moved = {n["instance"]: n for n in ctx.notes if "instance" in n}
        left = {n for n, note in moved.items() if note["from"] == drained}
        self.assertTrue(left, "the planner moves something off the drained node")
        self.assertEqual(set(ctx.state.evacuated), left)
        for name in left:
            first_job = moved[name]["jobs"][0]
            first = next(st for st in committed if first_job in st.jobs)
            self.assertIn(name, first.evacuated)


class _Store:
    """Stands in for the state store: keeps every committed state."""

    def __init__(self, out: list[MaintState]) -> None:
        self.out = out

    def commit(self, new: MaintState) -> None:
        self.out.append(new)


class QueueRapi(FakeRapi):
    """A RAPI whose job queue holds ``docs`` (jobs found there by reconciliation)."""

    def __init__(self, cluster: Any, docs: list[dict[str, Any]]) -> None:
        super().__init__(cluster)
        self.docs = docs
        self.loads = 0

    async def jobs_bulk_raw(self) -> list[Any]:
        return self.docs

    async def load_cluster(self) -> Any:
        self.loads += 1
        return self.cluster


class AdoptedJoinTests(SynchronousTestCase):
    """A move submitted by a daemon that crashed (or lost the master role)
    before committing it is found in Ganeti's queue; its Xen instance joins
    the evacuated list in the reconcile commit, exactly once."""

    def reconcile(self, docs: list[dict[str, Any]], state: MaintState | None = None,
                  **flags: dict[str, Any]) -> tuple[Ctx, QueueRapi]:
        rapi = QueueRapi(cluster(**flags), docs)
        ctx = Ctx(state=state or MaintState(), rapi=rapi)
        self.successResultOf(defer.Deferred.fromCoroutine(reconcile_step(ctx)))
        return ctx, rapi

    def test_running_moves_off_a_drained_node_join_xen_only(self) -> None:
        docs = [L.migrate(1, "running", "x1", reason=format_reason("balance", "x1")),
                L.migrate(2, "running", "k1", reason=format_reason("harep", "k1")),
                L.migrate(3, "running", "x3", reason=format_reason("balance", "x3")),
                L.migrate(4, "queued", "x2", uuid=L.U1)]
        ctx, rapi = self.reconcile(docs, a={"drained": True})
        self.assertEqual(ctx.state.evacuated, ("x1", "x2"))
        self.assertIn({"reconcile": "evacuated", "instances": ["x1", "x2"]}, ctx.notes)
        self.assertEqual(set(ctx.state.jobs), {1, 2, 3, 4})
        # The next round knows these jobs: nothing joins again, no extra snapshot.
        loads = rapi.loads
        again = Ctx(state=attrs.evolve(ctx.state, evacuated=()), rapi=rapi)
        self.successResultOf(defer.Deferred.fromCoroutine(reconcile_step(again)))
        self.assertEqual(again.state.evacuated, ())
        self.assertEqual(rapi.loads, loads)

    def test_finished_incident_move_joins_finished_balance_move_does_not(self) -> None:
        inc = L.known(node="u-a", node_name="a")
        docs = [L.migrate(7, "success", "x1"),
                L.migrate(8, "success", "x2", reason=format_reason("balance", "x2")),
                L.migrate(9, "error", "x3", uuid=L.U2)]
        # moved already: the primary is no longer the drained node
        ctx, _ = self.reconcile(docs, MaintState(incidents=(inc,)))
        self.assertEqual(ctx.state.evacuated, ("x1",))
        self.assertIn(7, ctx.state.incident(L.U1).jobs)

    def test_only_finished_jobs_of_others_load_nothing(self) -> None:
        docs = [L.migrate(8, "success", "x2", reason=format_reason("balance", "x2"))]
        ctx, rapi = self.reconcile(docs, a={"drained": True})
        self.assertEqual((ctx.state.evacuated, rapi.loads), ((), 0))
