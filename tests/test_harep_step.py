"""The harep round step against a fake RapiClient that records every call."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.model import Cluster
from maintd.daemon.state import MaintState
from maintd.daemon.steps.harep import RapiError, harep_step
from maintd.decide.harep.tags import RepairResult, RepairType, parse
from tests.harep_fixtures import P, drbd, make_cluster, plain, with_tags


@attrs.frozen
class Job:
    id: int
    status: str

    @property
    def final(self) -> bool:
        return self.status in ("success", "error", "canceled", "lost")

    @property
    def ok(self) -> bool:
        return self.status == "success"


class FakeRapi:
    """Records calls; tag jobs apply at once, repair jobs stay 'running'."""

    def __init__(self, cluster: Cluster) -> None:
        self.tags_of = {name: set(i.tags) for name, i in cluster.instances.items()}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.status: dict[int, str] = {}
        self.next_id = 100
        self.tag_job_status = "success"
        self.fail_for: set[str] = set()
        #: tags of each instance at the moment each repair job was submitted
        self.tags_at_submit: dict[int, set[str]] = {}

    def _job(self, status: str) -> int:
        self.next_id += 1
        self.status[self.next_id] = status
        return self.next_id

    def _check(self, name: str) -> None:
        if name in self.fail_for:
            raise RapiError(f"RAPI unreachable for {name}")

    async def add_tags(self, kind: str, name: str, tags: list[str], reason: str) -> int:
        assert kind == "instance" and reason == f"maintd:1:harep:{name}:-"
        self._check(name)
        self.calls.append(("add_tags", name, {"tags": list(tags)}))
        if self.tag_job_status == "success":
            self.tags_of[name].update(tags)
        return self._job(self.tag_job_status)

    async def remove_tags(self, kind: str, name: str, tags: list[str], reason: str) -> int:
        assert kind == "instance" and reason == f"maintd:1:harep:{name}:-"
        self.calls.append(("remove_tags", name, {"tags": list(tags)}))
        self.tags_of[name].difference_update(tags)
        return self._job("success")

    async def tags(self, kind: str, name: str) -> list[str]:
        return sorted(self.tags_of[name])

    async def wait_jobs(self, job_ids: list[int], timeout: float) -> dict[int, Job]:
        self.calls.append(("wait_jobs", "", {"jobs": list(job_ids)}))
        return {j: Job(j, self.status.get(j, "lost")) for j in job_ids}

    def _repair(self, method: str, name: str, kwargs: dict[str, Any]) -> int:
        assert kwargs.pop("reason") == f"maintd:1:harep:{name}:-"
        self._check(name)
        self.calls.append((method, name, kwargs))
        job = self._job("running")
        self.tags_at_submit[job] = set(self.tags_of[name])
        return job

    async def failover_instance(self, name: str, **kw: Any) -> int:
        return self._repair("failover_instance", name, kw)

    async def migrate_instance(self, name: str, **kw: Any) -> int:
        return self._repair("migrate_instance", name, kw)

    async def replace_disks(self, name: str, **kw: Any) -> int:
        return self._repair("replace_disks", name, kw)

    async def recreate_disks(self, name: str, **kw: Any) -> int:
        return self._repair("recreate_disks", name, kw)

    async def shutdown_instance(self, name: str, **kw: Any) -> int:
        return self._repair("shutdown_instance", name, kw)

    async def reinstall_instance(self, name: str, **kw: Any) -> int:
        return self._repair("reinstall_instance", name, kw)

    def writes(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [c for c in self.calls if c[0] != "wait_jobs"]


@attrs.define
class Ctx:
    cluster: Cluster
    rapi: FakeRapi
    now: float = 1_700_000_000.0
    state: MaintState = attrs.field(factory=MaintState)
    config: Any = attrs.field(factory=lambda: SimpleNamespace(dry_run=False, job_wait=60.0))
    free_nodes: set[str] = attrs.field(factory=set)
    notes: list[dict[str, Any]] = attrs.field(factory=list)
    submitting: bool = True
    commits: int = 0

    async def commit(self, new: MaintState) -> None:
        self.commits += 1
        self.state = new


def run(ctx: Ctx) -> None:
    d = Deferred.fromCoroutine(harep_step(ctx))
    failures: list[Any] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()


class World:
    """A cluster whose instance tags follow what the fake RAPI did."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.rapi = FakeRapi(cluster)
        self.state = MaintState()
        self.now = 1_700_000_000.0

    def round(self, *, dry_run: bool = False, submitting: bool = True, free=None, **changes) -> Ctx:
        insts = {
            n: attrs.evolve(i, tags=frozenset(self.rapi.tags_of[n]))
            for n, i in self.cluster.instances.items()
        }
        self.cluster = attrs.evolve(self.cluster, instances=insts, **changes)
        ctx = Ctx(
            cluster=self.cluster,
            rapi=self.rapi,
            now=self.now,
            state=self.state,
            free_nodes=set(self.cluster.nodes) if free is None else set(free),
            submitting=submitting,
        )
        ctx.config.dry_run = dry_run
        run(ctx)
        self.state = ctx.state
        self.now += 300
        return ctx

    def move(self, name: str, **changes: Any) -> None:
        insts = dict(self.cluster.instances)
        insts[name] = attrs.evolve(insts[name], **changes)
        self.cluster = attrs.evolve(self.cluster, instances=insts)

    def repair_tags(self, name: str) -> list[Any]:
        out = [parse(t) for t in self.rapi.tags_of[name]]
        return sorted(
            (t for t in out if t is not None and hasattr(t, "id")), key=lambda t: t.format()
        )


class RepairFlowTests(SynchronousTestCase):
    def test_failover_pending_tag_before_job_then_result(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        ctx = w.round()
        methods = [c[0] for c in w.rapi.writes()]
        self.assertEqual(
            methods, ["add_tags", "failover_instance", "add_tags", "remove_tags"], w.rapi.calls
        )
        # The pending tag was on the instance (its job waited for) before the repair job.
        self.assertEqual(w.rapi.calls[1], ("wait_jobs", "", {"jobs": [101]}))
        failover_job = 102
        at_submit = [parse(t) for t in w.rapi.tags_at_submit[failover_job]]
        self.assertTrue(any(getattr(t, "result", 0) is None for t in at_submit if t))
        self.assertEqual(w.rapi.calls[2][2], {"ignore_consistency": True})
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(
            (pending.type, pending.result, pending.jobs), (RepairType.FAILOVER, None, (102,))
        )
        # Every job is recorded, and the touched node is no longer free.
        self.assertEqual(set(ctx.state.jobs), {101, 102, 103, 104})
        self.assertNotIn("n3", ctx.free_nodes)
        self.assertIn(pending.id, ctx.state.harep)
        self.assertEqual(ctx.notes[0]["harep"], "repair")

        # Next round: still running -> nothing written.
        before = len(w.rapi.writes())
        ctx = w.round()
        self.assertEqual(len(w.rapi.writes()), before)
        self.assertEqual(ctx.notes[0]["harep"], "waiting")

        # Job done: the result tag replaces the pending tag; record dropped.
        w.rapi.status[failover_job] = "success"
        w.move("inst1", primary="n3", secondaries=("n2",))
        ctx = w.round()
        (result,) = w.repair_tags("inst1")
        self.assertEqual(
            (result.result, result.jobs, result.id), (RepairResult.SUCCESS, (102,), pending.id)
        )
        self.assertEqual(result.ts, int(ctx.now))
        self.assertEqual(ctx.state.harep, {})

    def test_one_wait_for_all_pending_tags_then_the_repairs(self) -> None:
        insts = [drbd("a", "n2", "n3"), drbd("b", "n2", "n4"), drbd("c", "n5", "n2")]
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=insts))
        w.round()
        kinds = [c[0] for c in w.rapi.calls]
        waits = [c for c in w.rapi.calls if c[0] == "wait_jobs"]
        self.assertEqual(len(waits), 1)
        self.assertEqual(len(waits[0][2]["jobs"]), 3)
        first_repair = min(
            kinds.index(m) for m in ("failover_instance", "replace_disks") if m in kinds
        )
        self.assertLess(kinds.index("wait_jobs"), first_repair)
        # Every repair job found its instance's pending tag already set.
        for job, tags in w.rapi.tags_at_submit.items():
            self.assertTrue(any("pending" in t for t in tags), job)
        self.assertEqual(len(w.rapi.tags_at_submit), 3)

    def test_failed_job_gives_failure_and_hands_off(self) -> None:
        w = World(make_cluster(offline=["n3"], group_tags=[P + "fix-storage"], instances=[drbd()]))
        w.round()
        call = [c for c in w.rapi.calls if c[0] == "replace_disks"][0]
        self.assertEqual(call[2]["mode"], "replace_new_secondary")
        self.assertIn(call[2]["remote_node"], {"n1", "n4", "n5"})
        w.rapi.status[102] = "error"
        w.round()
        (result,) = w.repair_tags("inst1")
        self.assertEqual(result.result, RepairResult.FAILURE)
        before = len(w.rapi.writes())
        ctx = w.round()
        self.assertEqual(len(w.rapi.writes()), before)
        self.assertEqual(ctx.notes[0]["harep"], "failed")

    def test_enoperm_tag_without_job_once(self) -> None:
        w = World(
            make_cluster(offline=["n2"], cluster_tags=[P + "fix-storage"], instances=[drbd()])
        )
        w.round()
        self.assertEqual([c[0] for c in w.rapi.writes()], ["add_tags"])
        (tag,) = w.repair_tags("inst1")
        self.assertEqual(
            (tag.result, tag.type, tag.jobs), (RepairResult.ENOPERM, RepairType.FAILOVER, ())
        )
        w.round()
        self.assertEqual(len(w.rapi.writes()), 1)

    def test_migrate_for_drained_primary(self) -> None:
        w = World(make_cluster(drained=["n2"], cluster_tags=[P + "migrate"], instances=[drbd()]))
        ctx = w.round()
        call = [c for c in w.rapi.calls if c[0] == "migrate_instance"][0]
        self.assertEqual(call[2], {"mode": "live"})
        self.assertFalse({"n2", "n3"} & ctx.free_nodes)

    def test_three_step_reinstall(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "reinstall"], instances=[plain()]))
        w.round()
        (rec,) = [c for c in w.rapi.calls if c[0] == "recreate_disks"]
        (target,) = rec[2]["nodes"]
        w.rapi.status[102] = "success"
        w.move("inst1", primary=target)
        w.round()
        self.assertEqual(
            [c[0] for c in w.rapi.calls if c[1] == "inst1"][-3:],
            ["shutdown_instance", "add_tags", "remove_tags"],
        )
        (pending,) = w.repair_tags("inst1")
        self.assertEqual((pending.result, len(pending.jobs)), (None, 2))
        w.rapi.status[pending.jobs[1]] = "success"
        w.move("inst1", admin_state="down")
        w.round()
        # The instance was up when the repair began: the reinstall starts it.
        self.assertEqual(
            [c[2] for c in w.rapi.calls if c[0] == "reinstall_instance"], [{"start": True}]
        )
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(len(pending.jobs), 3)
        w.rapi.status[pending.jobs[2]] = "success"
        w.round()
        (result,) = w.repair_tags("inst1")
        self.assertEqual((result.result, result.jobs), (RepairResult.SUCCESS, pending.jobs))

    def test_slow_pending_tag_repair_starts_next_round(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        w.rapi.tag_job_status = "running"
        ctx = w.round()
        self.assertEqual([c[0] for c in w.rapi.writes()], ["add_tags"])
        self.assertEqual(ctx.notes[-1]["harep"], "error")
        # The tag job lands after the round; the next round starts that repair.
        placeholder = w.rapi.calls[0][2]["tags"][0]
        w.rapi.tags_of["inst1"].add(placeholder)
        w.rapi.tag_job_status = "success"
        ctx = w.round()
        self.assertEqual(ctx.notes[0]["harep"], "continue")
        self.assertEqual(
            [c[0] for c in w.rapi.writes()][1:], ["failover_instance", "add_tags", "remove_tags"]
        )
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(pending.format().rsplit(":", 1)[0], placeholder.rsplit(":", 1)[0])
        self.assertEqual(len(pending.jobs), 1)
        self.assertIn(pending.id, ctx.state.harep)

    def test_placeholder_with_record_waits_for_recorded_job(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        w.round()
        # Simulate the queued tag update not having run yet: only the placeholder is there.
        (pending,) = w.repair_tags("inst1")
        placeholder = attrs.evolve(pending, jobs=()).format()
        w.rapi.tags_of["inst1"] = {placeholder, P + "failover"}
        before = len(w.rapi.writes())
        ctx = w.round()
        self.assertEqual(len(w.rapi.writes()), before)
        self.assertEqual(ctx.notes[0]["harep"], "waiting")


class GuardTests(SynchronousTestCase):
    def test_dry_run_writes_nothing_and_notes_the_plan(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        ctx = w.round(dry_run=True)
        self.assertEqual(w.rapi.writes(), [])
        self.assertEqual(ctx.state.jobs, ())
        (note,) = ctx.notes
        self.assertTrue(note["dry_run"])
        self.assertEqual(note["harep"], "repair")
        self.assertIn("failover_instance(inst1", note["ops"][0])
        self.assertNotIn("n3", ctx.free_nodes)

    def test_not_submitting_writes_nothing(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        ctx = w.round(submitting=False)
        self.assertEqual(w.rapi.writes(), [])
        self.assertIn("not submitted", ctx.notes[0]["message"])

    def test_busy_nodes_are_not_touched(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        ctx = w.round(free={"n1", "n2", "n4", "n5"})
        self.assertEqual(w.rapi.writes(), [])
        self.assertEqual(ctx.notes[0]["harep"], "blocked")

    def test_not_enabled_and_healthy_do_nothing(self) -> None:
        w = World(make_cluster(offline=["n2"], instances=[drbd(), drbd("ok", "n4", "n5")]))
        ctx = w.round()
        self.assertEqual(w.rapi.writes(), [])
        self.assertEqual([n["instance"] for n in ctx.notes], ["inst1"])
        self.assertEqual(ctx.notes[0]["harep"], "not-enabled")

    def test_repeating_no_action_verdicts_log_at_debug(self) -> None:
        """Without an autorepair tag a broken instance is noted every round, but
        logged only at debug; a repair that starts is logged at info."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        World(make_cluster(offline=["n2"], instances=[drbd()])).round()
        World(
            make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()])
        ).round()
        levels = {
            e["verdict"]: e["log_level"]
            for e in events
            if e.get("log_namespace") == "maintd.daemon.steps.harep" and "verdict" in e
        }
        self.assertEqual(levels["not-enabled"], LogLevel.debug)
        self.assertEqual(levels["repair"], LogLevel.info)

    def test_failed_pending_tag_job_stops_the_repair(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        w.rapi.tag_job_status = "error"
        ctx = w.round()
        self.assertEqual([c[0] for c in w.rapi.writes()], ["add_tags"])
        self.assertEqual(ctx.notes[-1]["harep"], "error")
        self.assertEqual(ctx.state.jobs, (101,))

    def test_rapi_error_on_one_instance_does_not_stop_the_others(self) -> None:
        insts = [drbd("a", "n2", "n3"), drbd("b", "n2", "n4")]
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=insts))
        w.rapi.fail_for.add("a")
        ctx = w.round()
        self.assertEqual([c[1] for c in w.rapi.calls if c[0] == "failover_instance"], ["b"])
        errors = [n for n in ctx.notes if n["harep"] == "error"]
        self.assertEqual([n["instance"] for n in errors], ["a"])
        self.assertIn("unreachable", errors[0]["message"])

    def test_malformed_tags_noted_with_instance(self) -> None:
        inst = with_tags(drbd(), P + "pending:oops")
        w = World(make_cluster(instances=[inst]))
        ctx = w.round()
        self.assertEqual(ctx.notes[0]["harep"], "malformed-tag")
        self.assertIn("inst1", ctx.notes[0]["message"])

    def test_malformed_group_and_cluster_tags_noted_with_object(self) -> None:
        w = World(
            make_cluster(
                offline=["n2"],
                cluster_tags=[P + "failover", P + "suspend:someday"],
                group_tags=[P + "sometimes"],
                instances=[drbd()],
            )
        )
        ctx = w.round()
        bad = [n for n in ctx.notes if n["harep"] == "malformed-tag"]
        self.assertEqual({n.get("cluster") or n.get("group") for n in bad}, {"cluster", "g1"})
        self.assertTrue(any("someday" in n["message"] for n in bad))
        # The good cluster tag still applies.
        self.assertIn("failover_instance", [c[0] for c in w.rapi.calls])

    def test_two_pending_is_an_error_for_that_instance_only(self) -> None:
        bad = with_tags(drbd("bad"), P + "pending:failover:a:1:5", P + "pending:failover:b:2:6")
        good = drbd("good", "n2", "n4")
        w = World(
            make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[bad, good])
        )
        ctx = w.round()
        self.assertEqual([c[1] for c in w.rapi.calls if c[0] == "failover_instance"], ["good"])
        self.assertEqual(ctx.notes[0]["harep"], "error")
        self.assertIn("bad", ctx.notes[0]["message"])

    def test_no_snapshot_is_a_no_op(self) -> None:
        ctx = Ctx(cluster=None, rapi=FakeRapi(make_cluster()))  # type: ignore[arg-type]
        run(ctx)
        self.assertEqual(ctx.notes, [])


class StateRecordTests(SynchronousTestCase):
    def test_repair_records_survive_the_store_format(self) -> None:
        state = MaintState(
            jobs=(5, 6), harep={"rid": {"instance": "i", "jobs": [5], "tag_jobs": [6]}}
        )
        again = MaintState.from_json(state.to_json())
        self.assertEqual(again.harep["rid"]["jobs"], [5])
        self.assertEqual(MaintState.from_json({"schema": 1}).harep, {})
