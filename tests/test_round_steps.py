"""Round steps against a fake RAPI client, fake mond and fake round context."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from maintd.cluster.executor import IRepairExecutor, RepairResult
from maintd.cluster.model import Cluster
from maintd.cluster.mond import DiagnoseReport, MondError
from maintd.cluster.rapi.errors import RapiServerError
from maintd.cluster.rapi.jobs import JobResult
from maintd.daemon.state import TAG_FAILED, TAG_READY, Action, MaintState, RepairStatus
from maintd.daemon.steps import default_steps
from maintd.daemon.steps.cleanup import cleanup_step
from maintd.daemon.steps.collect import collect_step
from maintd.daemon.steps.evacuated import evacuated_step
from maintd.daemon.steps.guard import pause_step, storm_step
from maintd.daemon.steps.handle import handle_step
from maintd.daemon.steps.jobs import jobs_step
from maintd.daemon.steps.reconcile import reconcile_step, reconcile_tags_step
from maintd.daemon.steps.replica import replica_nodes_step, replica_start_step
from maintd.daemon.steps.snapshot import snapshot_step
from maintd.decide import incidents as I
from maintd.decide.guardrails import DEFAULT_MAX_EVACUATING, DEFAULT_STORM_THRESHOLD, Limit
from tests.test_round_incidents import drbd, incident, mk_cluster, nd, shared


@attrs.frozen
class Cfg:
    dry_run: bool = False
    job_wait: float = 5.0
    max_evacuating: Limit = DEFAULT_MAX_EVACUATING
    storm_threshold: Limit = DEFAULT_STORM_THRESHOLD


@attrs.frozen
class CappedCfg(Cfg):
    max_incidents_per_node: int = 8


@attrs.define
class Ctx:
    state: MaintState
    rapi: Any
    mond: Any = None
    executor: Any = None
    config: Cfg = Cfg()
    now: float = 1000.0
    submitting: bool = True
    cluster: Cluster | None = None
    free_nodes: set[str] = attrs.field(factory=set)
    notes: list[dict[str, Any]] = attrs.field(factory=list)
    reports: dict[str, Any] = attrs.field(factory=dict)
    commits: int = 0
    store: Any = None
    queue: Any = None

    async def commit(self, new: MaintState) -> None:
        self.commits += 1
        self.state = new


class FakeRapi:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ids = itertools.count(100)
        self.calls: list[tuple[Any, ...]] = []
        self.status: dict[int, JobResult] = {}
        self.fail_writes = False
        self.seen_states: list[MaintState] = []
        self.ctx: Ctx | None = None

    async def load_cluster(self) -> Cluster:
        return self.cluster

    async def wait_jobs(self, ids: list[int], timeout: float) -> dict[int, JobResult]:
        return {j: self.status.get(j, JobResult(j, "success")) for j in ids}

    async def jobs_bulk_raw(self) -> list[Any]:
        return []  # these tests' jobs are not in a queue (see test_reconcile_*)

    def _write(self, *call: Any) -> int:
        if self.fail_writes:
            raise RapiServerError("HTTP 503 from https://127.0.0.1/2")
        if self.ctx is not None:
            self.seen_states.append(self.ctx.state)
        self.calls.append(call)
        return next(self.ids)

    async def add_tags(self, kind: str, name: str, tags: list[str], reason: str) -> int:
        return self._write("add_tags", kind, name, tuple(tags), reason)

    async def set_node_drained(self, node: str, drained: bool, reason: str) -> int:
        return self._write("drain", node, drained, reason)

    async def migrate_instance(self, name: str, *, target_node: Any = None, mode: str = "live",
                               allow_failover: bool = False, reason: str) -> int:
        return self._write("migrate", name, target_node, reason)

    async def failover_instance(self, name: str, *, target_node: Any = None,
                                ignore_consistency: bool = False, reason: str) -> int:
        self.ignore_consistency = ignore_consistency
        return self._write("failover", name, target_node, reason)

    async def replace_disks(self, name: str, *, mode: str, remote_node: str, reason: str) -> int:
        return self._write("replace", name, remote_node, reason)


class FakeMond:
    def __init__(self, reports: dict[str, Any]) -> None:
        self.reports = reports
        self.asked: list[str] = []

    async def diagnose(self, node: Any) -> Any:
        raise AssertionError("gather is faked")

    async def gather(self, nodes: Any, fn: Any) -> dict[str, Any]:
        names = [n.name for n in nodes]
        self.asked = names
        return {n: self.reports.get(n, DiagnoseReport(n, Action.OK, None, [], {"status": "Ok"}))
                for n in names}


def rep(node: str, action: Action, detail: str = "x", command: str | None = None) -> DiagnoseReport:
    raw = {"status": action.wire, "command": command, "details": [detail]}
    return DiagnoseReport(node, action, command, [detail], raw)


INCIDENT_STEPS = [replica_start_step, reconcile_step, pause_step, jobs_step, snapshot_step,
                  replica_nodes_step, pause_step, reconcile_tags_step, cleanup_step, collect_step,
                  storm_step, evacuated_step, handle_step]


class StepTests(SynchronousTestCase):
    def run_steps(self, ctx: Ctx, steps: list[Any]) -> None:
        async def go() -> None:
            for s in steps:
                await s(ctx)

        self.successResultOf(defer.Deferred.fromCoroutine(go()))

    def round(self, ctx: Ctx) -> None:
        ctx.notes = []
        # the incident steps only (harep and balance have their own tests)
        self.run_steps(ctx, INCIDENT_STEPS)

    def test_default_steps_order(self) -> None:
        steps = default_steps(Cfg())
        self.assertEqual(steps[:13], INCIDENT_STEPS)

    def test_collect_skips_offline_and_errors(self) -> None:
        c = mk_cluster([nd("a"), nd("b", offline=True), nd("c")], [])
        mond = FakeMond({"a": rep("a", Action.EVACUATE), "c": MondError("c", "garbage")})
        ctx = Ctx(MaintState(), FakeRapi(c), mond)
        self.run_steps(ctx, [snapshot_step, collect_step])
        self.assertEqual(mond.asked, ["a", "c"])
        self.assertEqual([i.node_name for i in ctx.state.incidents], ["a"])
        self.assertEqual(ctx.free_nodes, {"b", "c"})

    def test_evacuation_lifecycle(self) -> None:
        c = mk_cluster([nd("a"), nd("b"), nd("c"), nd("d")],
                       [drbd("i1", "a", "b"), shared("r1", "a"), drbd("s1", "c", "a")])
        rapi = FakeRapi(c)
        mond = FakeMond({"a": rep("a", Action.EVACUATE)})
        ctx = Ctx(MaintState(), rapi, mond)
        rapi.ctx = ctx

        self.round(ctx)
        inc = ctx.state.incidents[0]
        uuid = inc.uuid
        reason = I.job_reason(inc)
        self.assertTrue(reason.startswith(f"maintd:1:incident:{uuid}:"))
        self.assertEqual(rapi.calls, [("drain", "a", True, reason)])
        self.assertEqual(inc.status, RepairStatus.PENDING)
        self.assertEqual(inc.jobs, (100,))
        self.assertEqual(ctx.state.jobs, (100,))
        # job 100 is in the incident at the moment the next job is submitted
        def sim(cluster: Cluster) -> None:
            rapi.cluster = cluster

        sim(attrs.evolve(c, nodes={**c.nodes, "a": attrs.evolve(c.nodes["a"], drained=True)}))
        self.round(ctx)
        self.assertEqual(rapi.calls[-1], ("migrate", "i1", None, reason))
        self.assertEqual(rapi.seen_states[-1].incidents[0].jobs, (100,))
        self.assertEqual(ctx.state.jobs, (101,))  # 100 finished and cleared

        cl = rapi.cluster
        insts = dict(cl.instances)
        insts["i1"] = attrs.evolve(insts["i1"], primary="b", secondaries=("a",))
        sim(attrs.evolve(cl, instances=insts))
        self.round(ctx)
        self.assertEqual(rapi.calls[-1][:2], ("migrate", "r1"))
        self.assertIn(rapi.calls[-1][2], {"b", "c", "d"})
        self.assertNotIn(rapi.calls[-1][2], {"a"})

        insts["r1"] = attrs.evolve(insts["r1"], primary="d")
        sim(attrs.evolve(cl, instances=insts))
        self.round(ctx)  # secondaries: i1 (on b, sec a) and s1 (on c, sec a)
        self.assertEqual(rapi.calls[-1][:2], ("replace", "i1"))
        insts["i1"] = attrs.evolve(insts["i1"], secondaries=(rapi.calls[-1][2],))
        sim(attrs.evolve(cl, instances=insts))
        self.round(ctx)
        self.assertEqual(rapi.calls[-1][:2], ("replace", "s1"))
        insts["s1"] = attrs.evolve(insts["s1"], secondaries=(rapi.calls[-1][2],))
        sim(attrs.evolve(cl, instances=insts))
        self.round(ctx)
        self.assertEqual(rapi.calls[-1], ("add_tags", "node", "a", (TAG_READY + uuid,), reason))
        done = ctx.state.incident(uuid)
        assert done is not None
        self.assertEqual(done.status, RepairStatus.COMPLETED)
        self.assertEqual(done.jobs, tuple(range(100, 100 + len(rapi.calls))))
        self.assertEqual(len(rapi.calls), 6)
        for call in rapi.calls:
            self.assertEqual(call[-1], reason)
        n_calls = len(rapi.calls)
        # tag present: kept, nothing more submitted, same report: no new incident
        nodes = dict(rapi.cluster.nodes)
        nodes["a"] = attrs.evolve(nodes["a"], tags={TAG_READY + uuid})
        sim(attrs.evolve(rapi.cluster, nodes=nodes))
        self.round(ctx)
        self.assertEqual(len(rapi.calls), n_calls)
        self.assertEqual([i.uuid for i in ctx.state.incidents], [uuid])
        # tag removed, node healthy again: forgotten
        nodes["a"] = attrs.evolve(nodes["a"], tags=set())
        sim(attrs.evolve(rapi.cluster, nodes=nodes))
        mond.reports = {}
        self.round(ctx)
        self.assertEqual(ctx.state.incidents, ())

    def test_failed_job_fails_incident(self) -> None:
        # a third node: room for i1's new secondary (else nothing is submitted at all)
        c = mk_cluster([nd("a"), nd("b"), nd("c")], [drbd("i1", "a", "b")])
        rapi = FakeRapi(c)
        mond = FakeMond({"a": rep("a", Action.EVACUATE)})
        ctx = Ctx(MaintState(), rapi, mond)
        self.round(ctx)
        uuid = ctx.state.incidents[0].uuid
        rapi.status[100] = JobResult(100, "error", "OpPrereqError: node busy")
        self.round(ctx)
        inc = ctx.state.incident(uuid)
        assert inc is not None
        self.assertEqual(inc.status, RepairStatus.FAILED)
        self.assertIn("job 100 error: OpPrereqError: node busy", inc.reason)
        self.assertEqual(rapi.calls[-1], ("add_tags", "node", "a", (TAG_FAILED + uuid,),
                                          I.job_reason(inc)))
        n = len(rapi.calls)
        nodes = {**c.nodes, "a": attrs.evolve(c.nodes["a"], drained=True,
                                             tags={TAG_FAILED + uuid})}
        rapi.cluster = attrs.evolve(c, nodes=nodes)
        self.round(ctx)
        self.assertEqual(len(rapi.calls), n, "no further jobs for a failed incident")
        # the operator removes the tag; the node still reports: a fresh incident
        nodes["a"] = attrs.evolve(nodes["a"], tags=set())
        rapi.cluster = attrs.evolve(c, nodes=nodes)
        self.round(ctx)
        self.assertEqual(len(ctx.state.incidents), 1)
        fresh = ctx.state.incidents[0]
        self.assertNotEqual(fresh.uuid, uuid)
        self.assertEqual(rapi.calls[-1][:2], ("migrate", "i1"))

    def test_lost_job_fails_and_running_job_waits(self) -> None:
        # a third node: room for i1's new secondary (else nothing is submitted at all)
        c = mk_cluster([nd("a"), nd("b"), nd("c")], [drbd("i1", "a", "b")])
        rapi = FakeRapi(c)
        ctx = Ctx(MaintState(), rapi, FakeMond({"a": rep("a", Action.EVACUATE)}))
        self.round(ctx)
        rapi.status[100] = JobResult(100, "running")
        n = len(rapi.calls)
        self.round(ctx)
        self.assertEqual(len(rapi.calls), n, "nothing new while the job runs")
        self.assertEqual(ctx.state.jobs, (100,))
        rapi.status[100] = JobResult.lost(100)
        self.round(ctx)
        self.assertEqual(ctx.state.incidents[0].status, RepairStatus.FAILED)
        self.assertIn("lost", ctx.state.incidents[0].reason)

    def test_plain_instance_fails_with_reason(self) -> None:
        from maintd.cluster.model import Instance

        c = mk_cluster([nd("a"), nd("b")], [Instance("p1", "u", "a", (), "plain")])
        rapi = FakeRapi(c)
        ctx = Ctx(MaintState(), rapi, FakeMond({"a": rep("a", Action.EVACUATE_FAILOVER)}))
        self.round(ctx)
        # drained first, so the failing node receives no new instances
        self.assertEqual(ctx.state.incidents[0].status, RepairStatus.PENDING)
        self.assertEqual(rapi.calls[0][:3], ("drain", "a", True))
        rapi.cluster = mk_cluster([nd("a", drained=True), nd("b")], c.instances.values())
        self.round(ctx)
        inc = ctx.state.incidents[0]
        self.assertEqual(inc.status, RepairStatus.FAILED)
        self.assertIn("p1 has disk template plain", inc.reason)
        self.assertEqual([c[0] for c in rapi.calls], ["drain", "add_tags"])

    def test_dry_run_submits_nothing(self) -> None:
        # a third node: room for i1's new secondary (else nothing is submitted at all)
        c = mk_cluster([nd("a"), nd("b"), nd("c")], [drbd("i1", "a", "b")])
        rapi = FakeRapi(c)
        ctx = Ctx(MaintState(), rapi, FakeMond({"a": rep("a", Action.EVACUATE)}),
                  config=Cfg(dry_run=True))
        self.round(ctx)
        self.assertEqual(rapi.calls, [])
        self.assertEqual(ctx.state.incidents[0].status, RepairStatus.NOTED)
        self.assertIn({"incident": ctx.state.incidents[0].uuid, "node": "a", "plan": "drain a",
                       "submitted": False}, ctx.notes)

    def test_rapi_error_on_submit_keeps_incident(self) -> None:
        # a third node: room for i1's new secondary (else nothing is submitted at all)
        c = mk_cluster([nd("a"), nd("b"), nd("c")], [drbd("i1", "a", "b")])
        rapi = FakeRapi(c)
        rapi.fail_writes = True
        ctx = Ctx(MaintState(), rapi, FakeMond({"a": rep("a", Action.EVACUATE)}))
        self.round(ctx)
        self.assertEqual(ctx.state.incidents[0].status, RepairStatus.NOTED)
        self.assertTrue(any("503" in n.get("error", "") for n in ctx.notes))
        rapi.fail_writes = False
        self.round(ctx)
        self.assertEqual(rapi.calls[0][:2], ("drain", "a"))

    def test_live_repair(self) -> None:
        c = mk_cluster([nd("a"), nd("b"), nd("c")], [])

        @implementer(IRepairExecutor)
        class Exec:
            def __init__(self) -> None:
                self.runs: list[tuple[str, str]] = []

            def execute(self, node: Any, command: str, report: Any, incident: str = "") -> Any:
                self.runs.append((node.name, command))
                return defer.succeed(RepairResult(ok=command == "good"))

        rapi = FakeRapi(c)
        ex = Exec()
        ctx = Ctx(MaintState(), rapi, FakeMond({
            "a": rep("a", Action.LIVE_REPAIR, command="good"),
            "b": rep("b", Action.LIVE_REPAIR, command="bad"),
            "c": rep("c", Action.LIVE_REPAIR)}), executor=ex,
            config=Cfg(storm_threshold=Limit(count=3)))  # 3 of 3 nodes: no storm here
        self.round(ctx)
        by_node = {i.node_name: i for i in ctx.state.incidents}
        self.assertEqual(sorted(ex.runs), [("a", "good"), ("b", "bad")])
        self.assertEqual(by_node["a"].status, RepairStatus.COMPLETED)
        self.assertEqual(by_node["b"].status, RepairStatus.FAILED)
        self.assertEqual(by_node["c"].status, RepairStatus.FAILED)
        self.assertIn("no repair command", by_node["c"].reason)

    def test_flapping_report_leaves_no_trail_of_noted_incidents(self) -> None:
        # a diagnose script with a timestamp in its details: a new report
        # every round; the node's instance cannot move (no room anywhere)
        c = mk_cluster([nd("a"), nd("b", mfree=0)], [shared("r1", "a", mem=4096)])
        rapi = FakeRapi(c)
        mond = FakeMond({})
        ctx = Ctx(MaintState(), rapi, mond)
        for n in range(30):
            mond.reports["a"] = rep("a", Action.EVACUATE, detail=f"at {n}")
            ctx.now = 1000.0 + 300 * n
            self.round(ctx)
        # none can act (the evacuation plan finds no room, so nothing is
        # drained); each is noted, then dropped a round later when the node
        # reports something else: not one incident per round (30)
        self.assertEqual(
            [(i.status, i.original["details"]) for i in ctx.state.incidents],
            [(RepairStatus.NOTED, ["at 29"])],
        )
        self.assertEqual(rapi.calls, [])
        drops = [n for n in ctx.notes if n.get("action") == "drop"]
        self.assertEqual(len(drops), 1)
        self.assertIn("no longer reports it", drops[0]["reason"])

    def test_incidents_per_node_are_capped_and_the_excess_reported(self) -> None:
        olds = [incident("a", uuid=f"old-{n}", status=RepairStatus.COMPLETED, tag_set=True)
                for n in range(3)]
        c = mk_cluster([nd("a", tags=tuple(i.tag for i in olds)), nd("b")], [])
        mond = FakeMond({"a": rep("a", Action.EVACUATE, detail="new"),
                         "b": rep("b", Action.EVACUATE, detail="new")})
        ctx = Ctx(MaintState(incidents=tuple(olds)), FakeRapi(c), mond,
                  config=CappedCfg(max_incidents_per_node=3))
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.run_steps(ctx, [snapshot_step, cleanup_step, collect_step])
        self.assertEqual([i.uuid for i in ctx.state.incidents if i.node_name == "a"],
                         ["old-0", "old-1", "old-2"])
        self.assertEqual([i.node_name for i in ctx.state.incidents if i.node_name != "a"], ["b"])
        (refused,) = [n for n in ctx.notes if n.get("action") == "refused"]
        self.assertEqual((refused["node"], refused["report"]), ("a", "evacuate"))
        (warning,) = [e for e in logged if e.get("log_level") == LogLevel.warn
                      and e.get("log_namespace") == "maintd.daemon.steps.collect"]
        self.assertIn("--max-incidents-per-node", formatEvent(warning))
        self.assertIn("a", warning["node"])

    def test_a_master_node_shown_offline_is_logged_and_noted(self) -> None:
        # Ganeti never shows this (issue 16 J); a round facing it did nothing
        # without a word.
        c = attrs.evolve(mk_cluster([nd("m", offline=True)], []), master="m")
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        ctx = Ctx(MaintState(), FakeRapi(c), FakeMond({}))
        self.round(ctx)
        texts = [formatEvent(e) for e in logged if e.get("log_level") == LogLevel.warn]
        self.assertIn("snapshot: the master node m is offline (Ganeti refuses that: the master "
                      "role can be changed only via master-failover); its incidents are not "
                      "collected", texts)
        self.assertIn("collect: no online node to ask for a self-diagnose report (1 offline)",
                      texts)
        self.assertIn({"step": "snapshot", "problem": "the master node m is offline (Ganeti "
                       "refuses that: the master role can be changed only via master-failover)"},
                      ctx.notes)
        self.assertIn({"action": "collect", "offline": 1, "offline_nodes": ["m"]}, ctx.notes)
    def test_busy_agent_is_asked_again_next_round(self) -> None:
        """An executor answering "retry" (agent busy or unreachable) leaves the
        incident pending; the next round asks again with the same incident."""
        c = mk_cluster([nd("a")], [])
        answers = [RepairResult(ok=False, reason="agent on a is busy", retry=True),
                   RepairResult(ok=True)]

        @implementer(IRepairExecutor)
        class Exec:
            def __init__(self) -> None:
                self.incidents: list[str] = []

            def execute(self, node: Any, command: str, report: Any, incident: str = "") -> Any:
                self.incidents.append(incident)
                return defer.succeed(answers.pop(0))

        ex = Exec()
        ctx = Ctx(MaintState(), FakeRapi(c),
                  FakeMond({"a": rep("a", Action.LIVE_REPAIR, command="fix")}), executor=ex)
        self.round(ctx)
        inc = ctx.state.incidents[0]
        self.assertEqual(inc.status, RepairStatus.PENDING)
        self.assertIn({"incident": inc.uuid, "node": "a", "action": "repair-retry",
                       "reason": "agent on a is busy"}, ctx.notes)
        self.round(ctx)
        self.assertEqual(ctx.state.incidents[0].status, RepairStatus.COMPLETED)
        self.assertEqual(ex.incidents, [inc.uuid, inc.uuid], "the same incident both times")

    def test_no_executor_fails(self) -> None:
        c = mk_cluster([nd("a")], [])
        ctx = Ctx(MaintState(), FakeRapi(c),
                  FakeMond({"a": rep("a", Action.LIVE_REPAIR, command="fix")}))
        self.round(ctx)
        inc = ctx.state.incidents[0]
        self.assertEqual((inc.status, inc.reason),
                         (RepairStatus.FAILED, "no repair executor configured"))

    def test_canceled_gets_no_jobs(self) -> None:
        # a third node: room for i1's new secondary (else nothing is submitted at all)
        c = mk_cluster([nd("a"), nd("b"), nd("c")], [drbd("i1", "a", "b")])
        rapi = FakeRapi(c)
        mond = FakeMond({"a": rep("a", Action.EVACUATE)})
        ctx = Ctx(MaintState(), rapi, mond)
        self.round(ctx)
        uuid = ctx.state.incidents[0].uuid
        ctx.state = I.cancel_incident(ctx.state, uuid, 5.0)
        rapi.cluster = attrs.evolve(c, nodes={**c.nodes, "a": attrs.evolve(c.nodes["a"],
                                                                              drained=True)})
        n = len(rapi.calls)
        self.round(ctx)
        self.assertEqual(len(rapi.calls), n)
        self.assertEqual(ctx.state.incidents[0].status, RepairStatus.CANCELED)
        mond.reports = {}
        self.round(ctx)
        self.assertEqual(ctx.state.incidents, ())

    def test_snapshot_error_propagates(self) -> None:
        rapi = FakeRapi(mk_cluster([nd("a")], []))

        async def boom() -> Cluster:
            raise RapiServerError("HTTP 503")

        rapi.load_cluster = boom  # type: ignore[method-assign]
        ctx = Ctx(MaintState(incidents=(incident("a"),)), rapi, FakeMond({}))
        d = defer.Deferred.fromCoroutine(snapshot_step(ctx))
        self.failureResultOf(d, RapiServerError)
