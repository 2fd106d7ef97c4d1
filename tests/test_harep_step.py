"""The harep round step against a fake RapiClient that records every call."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.model import Cluster
from maintd.cluster.rapi.jobs import JobResult, OpInfo
from maintd.daemon.state import MaintState
from maintd.daemon.steps.harep import RapiError, harep_step, reason
from maintd.decide.harep.decide import is_own, repair_id
from maintd.decide.harep.opcodes import RAPI_WRITES
from maintd.decide.harep.tags import RepairResult, RepairTag, RepairType, parse
from maintd.decide.reason import parse_reason
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
    """Records calls; tag jobs apply at once, repair jobs stay 'running'.

    ``jobs_bulk`` answers the queue as Ganeti would: each job's opcodes with
    the reason trail RAPI gives them (none for the reinstall job).
    """

    def __init__(self, cluster: Cluster) -> None:
        self.tags_of = {name: set(i.tags) for name, i in cluster.instances.items()}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.status: dict[int, str] = {}
        self.next_id = 100
        self.tag_job_status = "success"
        self.fail_for: set[str] = set()
        #: methods that fail (RapiError) when called
        self.fail_methods: set[str] = set()
        #: tags of each instance at the moment each repair job was submitted
        self.tags_at_submit: dict[int, set[str]] = {}
        #: the queue as /2/jobs?bulk=1 shows it
        self.queue: dict[int, JobResult] = {}
        #: job ids in the order of the writes that made them
        self.job_order: list[int] = []
        self.clock = 1_700_000_000.0

    def _job(self, status: str, ops: tuple[OpInfo, ...] = ()) -> int:
        self.next_id += 1
        self.status[self.next_id] = status
        self.queue[self.next_id] = JobResult(self.next_id, status, ops=ops, received=self.clock)
        self.job_order.append(self.next_id)
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
        return self._job(self.tag_job_status, (OpInfo("OP_TAGS_SET", "", (reason,)),))

    async def remove_tags(self, kind: str, name: str, tags: list[str], reason: str) -> int:
        assert kind == "instance" and reason == f"maintd:1:harep:{name}:-"
        self.calls.append(("remove_tags", name, {"tags": list(tags)}))
        self.tags_of[name].difference_update(tags)
        return self._job("success", (OpInfo("OP_TAGS_DEL", "", (reason,)),))

    async def tags(self, kind: str, name: str) -> list[str]:
        return sorted(self.tags_of[name])

    async def wait_jobs(self, job_ids: list[int], timeout: float) -> dict[int, Job]:
        self.calls.append(("wait_jobs", "", {"jobs": list(job_ids)}))
        return {j: Job(j, self.status.get(j, "lost")) for j in job_ids}

    async def jobs_bulk(self) -> list[JobResult]:
        self.calls.append(("jobs_bulk", "", {}))
        return [attrs.evolve(j, status=self.status[i]) for i, j in sorted(self.queue.items())]

    def _repair(self, method: str, name: str, kwargs: dict[str, Any]) -> int:
        reason = kwargs.pop("reason")
        parsed = parse_reason(reason)
        assert parsed is not None and parsed.kind == "harep", reason
        self._check(name)
        if method in self.fail_methods:
            raise RapiError(f"RAPI refused {method} for {name}")
        self.calls.append((method, name, kwargs))
        if method == "reinstall_instance":
            ops = (OpInfo("OP_INSTANCE_SHUTDOWN", name), OpInfo("OP_INSTANCE_REINSTALL", name))
        else:
            ops = (OpInfo(OPCODE_OF[method], name, (reason,)),)
        job = self._job("running", ops)
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
        return [c for c in self.calls if c[0] not in ("wait_jobs", "jobs_bulk")]

    def tag_jobs(self) -> int:
        return sum(1 for c in self.calls if c[0] in ("add_tags", "remove_tags"))


OPCODE_OF = {m: v[2] for m, v in RAPI_WRITES.items()}


@attrs.define
class Ctx:
    cluster: Cluster
    rapi: FakeRapi
    now: float = 1_700_000_000.0
    state: MaintState = attrs.field(factory=MaintState)
    config: Any = attrs.field(
        factory=lambda: SimpleNamespace(dry_run=False, job_wait=60.0, iallocator=None)
    )
    free_nodes: set[str] = attrs.field(factory=set)
    notes: list[dict[str, Any]] = attrs.field(factory=list)
    submitting: bool = True
    commits: int = 0
    #: the daemon dies at this commit (the state file keeps the one before)
    crash_at: int | None = None

    async def commit(self, new: MaintState) -> None:
        self.commits += 1
        if self.commits == self.crash_at:
            raise Crash(f"daemon stopped at commit {self.commits}")
        self.state = new


class Crash(Exception):
    pass


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
        self.iallocator: str | None = None

    def round(
        self,
        *,
        dry_run: bool = False,
        submitting: bool = True,
        free=None,
        crash_at: int | None = None,
        **changes,
    ) -> Ctx:
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
            crash_at=crash_at,
        )
        ctx.config.dry_run = dry_run
        ctx.config.iallocator = self.iallocator
        self.rapi.clock = self.now
        try:
            run(ctx)
        finally:
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
    def test_failover_job_first_then_one_pending_tag_then_result(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        ctx = w.round()
        self.assertEqual([c[0] for c in w.rapi.writes()], ["failover_instance", "add_tags"])
        # harep's parameters: the consistency check is not skipped.
        self.assertEqual(w.rapi.writes()[0][2], {"ignore_consistency": False})
        # No tag of this repair before its job (harep's order).
        self.assertFalse(any("pending" in t for t in w.rapi.tags_at_submit[101]))
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(
            (pending.type, pending.result, pending.jobs), (RepairType.FAILOVER, None, (101,))
        )
        # Every job is recorded, and the touched node is no longer free.
        self.assertEqual(set(ctx.state.jobs), {101, 102})
        self.assertEqual(ctx.state.harep[pending.id]["tag_jobs"], [102])
        self.assertNotIn("n3", ctx.free_nodes)
        self.assertEqual(ctx.notes[0]["harep"], "repair")
        self.assertEqual(ctx.notes[0]["jobs"], [101, 102])

        # Next round: still running -> nothing written.
        before = len(w.rapi.writes())
        ctx = w.round()
        self.assertEqual(len(w.rapi.writes()), before)
        self.assertEqual(ctx.notes[0]["harep"], "waiting")

        # Job done: the result tag, then the pending tag removed; record dropped.
        w.rapi.status[101] = "success"
        w.move("inst1", primary="n3", secondaries=("n2",))
        ctx = w.round()
        self.assertEqual([c[0] for c in w.rapi.writes()][-2:], ["add_tags", "remove_tags"])
        (result,) = w.repair_tags("inst1")
        self.assertEqual(
            (result.result, result.jobs, result.id), (RepairResult.SUCCESS, (101,), pending.id)
        )
        self.assertEqual(result.ts, int(ctx.now))
        self.assertEqual(ctx.state.harep, {})
        # Three tag jobs for the whole repair (was five: placeholder, job ids, removal...).
        self.assertEqual(w.rapi.tag_jobs(), 3)

    def test_new_repair_removes_the_previous_result_in_the_pending_step(self) -> None:
        old = RepairTag(RepairType.FAILOVER, "old", 1_600_000_000, (5,), RepairResult.SUCCESS)
        inst = with_tags(drbd(), old.format())
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[inst]))
        w.round()
        self.assertEqual(
            [c[0] for c in w.rapi.writes()], ["failover_instance", "add_tags", "remove_tags"]
        )
        self.assertEqual(w.rapi.writes()[2][2], {"tags": [old.format()]})
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(pending.jobs, (101,))

    def test_replace_disks_names_the_clusters_default_iallocator(self) -> None:
        cluster = make_cluster(offline=["n3"], group_tags=[P + "fix-storage"], instances=[drbd()])
        w = World(attrs.evolve(cluster, default_iallocator="my-alloc"))
        ctx = w.round()
        (call,) = [c for c in w.rapi.calls if c[0] == "replace_disks"]
        self.assertEqual(call[2], {"mode": "replace_new_secondary", "iallocator": "my-alloc"})
        # Every node of the group may be picked: none is left to balancing.
        self.assertEqual(ctx.free_nodes, set())

    def test_iallocator_option_overrides_and_hail_is_the_fallback(self) -> None:
        for default, option, expected in (("", None, "hail"), ("my-alloc", "other", "other")):
            cluster = make_cluster(
                offline=["n3"], group_tags=[P + "fix-storage"], instances=[drbd()]
            )
            w = World(attrs.evolve(cluster, default_iallocator=default))
            w.iallocator = option
            w.round()
            (call,) = [c for c in w.rapi.calls if c[0] == "replace_disks"]
            self.assertEqual(call[2]["iallocator"], expected)

    def test_failed_job_gives_failure_and_hands_off(self) -> None:
        w = World(make_cluster(offline=["n3"], group_tags=[P + "fix-storage"], instances=[drbd()]))
        w.round()
        w.rapi.status[101] = "error"
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

    def test_reinstall_is_two_jobs_in_harep_order_and_one_pending_tag(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "reinstall"], instances=[plain()]))
        ctx = w.round()
        self.assertEqual(
            w.rapi.writes(),
            [
                ("recreate_disks", "inst1", {"iallocator": "hail"}),
                # The instance was up: RAPI's reinstall job starts it again.
                ("reinstall_instance", "inst1", {"start": True}),
                ("add_tags", "inst1", {"tags": [w.repair_tags("inst1")[0].format()]}),
            ],
        )
        (pending,) = w.repair_tags("inst1")
        self.assertEqual((pending.type, pending.jobs), (RepairType.REINSTALL, (101, 102)))
        # recreate-disks lets the iallocator place the instance on any node.
        self.assertEqual(ctx.free_nodes, set())
        w.rapi.status.update({101: "success", 102: "success"})
        w.round()
        (result,) = w.repair_tags("inst1")
        self.assertEqual((result.result, result.jobs), (RepairResult.SUCCESS, (101, 102)))
        self.assertEqual(w.rapi.tag_jobs(), 3)

    def test_reinstall_job_refused_is_submitted_next_round(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "reinstall"], instances=[plain()]))
        w.rapi.fail_methods.add("reinstall_instance")
        w.round()
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(pending.jobs, (101,))
        w.rapi.fail_methods.clear()
        w.rapi.status[101] = "success"
        w.move("inst1", primary="n4")
        ctx = w.round()
        self.assertEqual(ctx.notes[0]["harep"], "continue")
        self.assertEqual(
            [c[0] for c in w.rapi.writes()][-3:], ["reinstall_instance", "add_tags", "remove_tags"]
        )
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(pending.jobs, (101, 103))

    def test_iallocator_nodes_claimed_by_another_step_block_the_repair(self) -> None:
        w = World(make_cluster(offline=["n3"], group_tags=[P + "fix-storage"], instances=[drbd()]))
        # Incident handling moved something to n5 this round.
        ctx = w.round(free={"n1", "n2", "n3", "n4"})
        self.assertEqual(w.rapi.writes(), [])
        self.assertEqual(ctx.notes[0]["harep"], "blocked")
        self.assertIn("n5", ctx.notes[0]["message"])
        # An offline or drained node is never picked: it does not block.
        w.cluster = attrs.evolve(
            w.cluster,
            nodes={**w.cluster.nodes, "n5": attrs.evolve(w.cluster.nodes["n5"], drained=True)},
        )
        w.round(free={"n1", "n2", "n3", "n4"})
        self.assertEqual([c[0] for c in w.rapi.writes()], ["replace_disks", "add_tags"])

    def test_repairs_in_one_group_do_not_block_each_other(self) -> None:
        insts = [drbd("a", "n2", "n3"), drbd("b", "n4", "n3"), drbd("c", "n5", "n3")]
        w = World(make_cluster(offline=["n3"], group_tags=[P + "fix-storage"], instances=insts))
        w.round()
        self.assertEqual([c[1] for c in w.rapi.calls if c[0] == "replace_disks"], ["a", "b", "c"])


class RecoveryTests(SynchronousTestCase):
    def crash_after_submit(self, w: World, at: int = 1) -> None:
        """A round in which the daemon stops at commit ``at`` (1: the first
        repair job's id never reaches the store)."""
        with self.assertRaises(Crash):
            w.round(crash_at=at)

    def test_job_found_by_its_reason_is_tagged_not_submitted_again(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        self.crash_after_submit(w)
        ctx = w.round()
        self.assertEqual([c[0] for c in w.rapi.writes()], ["failover_instance", "add_tags"])
        (pending,) = w.repair_tags("inst1")
        # The very tag the lost round would have written (same id and time).
        self.assertEqual((pending.jobs, pending.ts), ((101,), int(w.now) - 600))
        self.assertTrue(is_own("inst1", pending))
        self.assertIn("already submitted", ctx.notes[0]["message"])
        self.assertIn(pending.id, ctx.state.harep)

    def test_jobs_of_finished_repairs_are_not_adopted(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        self.crash_after_submit(w)
        # Meanwhile (say) harep finished that job and later recorded an enoperm.
        w.rapi.status[101] = "success"
        later = RepairTag(RepairType.FAILOVER, "x", int(w.now) - 10, (), RepairResult.ENOPERM)
        w.rapi.tags_of["inst1"].add(later.format())
        w.round()
        self.assertEqual(
            [c[0] for c in w.rapi.writes()],
            ["failover_instance", "failover_instance", "add_tags", "remove_tags"],
        )

    def test_reinstall_crash_after_both_jobs_tags_both_from_record_and_queue(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "reinstall"], instances=[plain()]))
        # The recreate job's id is committed, the reinstall job's is not.
        self.crash_after_submit(w, 2)
        self.assertEqual([c[0] for c in w.rapi.writes()], ["recreate_disks", "reinstall_instance"])
        ctx = w.round()
        self.assertEqual(
            [c[0] for c in w.rapi.writes()], ["recreate_disks", "reinstall_instance", "add_tags"]
        )
        (pending,) = w.repair_tags("inst1")
        self.assertEqual((pending.type, pending.jobs), (RepairType.REINSTALL, (101, 102)))
        self.assertTrue(is_own("inst1", pending))
        self.assertEqual(ctx.notes[0]["harep"], "retag")

    def test_reinstall_crash_after_the_first_job_finishes_the_repair_once(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "reinstall"], instances=[plain()]))
        self.crash_after_submit(w, 1)
        self.assertEqual([c[0] for c in w.rapi.writes()], ["recreate_disks"])
        w.round()  # found by its reason: tagged, not submitted again
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(pending.jobs, (101,))
        self.assertTrue(is_own("inst1", pending))
        w.rapi.status[101] = "success"
        w.move("inst1", primary="n4")
        w.round()  # the missing reinstall job, once
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(pending.jobs, (101, 103))
        self.assertEqual(
            [c[0] for c in w.rapi.writes()].count("reinstall_instance"), 1, w.rapi.writes()
        )

    def test_continued_reinstall_found_in_the_queue_is_not_submitted_again(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "reinstall"], instances=[plain()]))
        w.rapi.fail_methods.add("reinstall_instance")
        w.round()
        w.rapi.fail_methods.clear()
        w.rapi.status[101] = "success"
        w.move("inst1", primary="n4")
        self.crash_after_submit(w, 1)  # the continued reinstall job, never committed
        w.round()
        self.assertEqual([c[0] for c in w.rapi.writes()].count("reinstall_instance"), 1)
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(pending.jobs, (101, 103))

    def test_older_versions_reinstall_stopped_after_its_shutdown_gets_its_reinstall(self) -> None:
        rid = repair_id("inst1", RepairType.REINSTALL, 1_600_000_000)
        legacy = RepairTag(RepairType.REINSTALL, rid, 1_600_000_000, (7, 8)).format()
        inst = with_tags(plain(primary="n4", admin_state="down"), legacy)
        w = World(make_cluster(cluster_tags=[P + "reinstall"], instances=[inst]))
        w.rapi.queue[7] = JobResult(
            7, "success", ops=(OpInfo("OP_INSTANCE_RECREATE_DISKS", "inst1"),)
        )
        w.rapi.queue[8] = JobResult(8, "success", ops=(OpInfo("OP_INSTANCE_SHUTDOWN", "inst1"),))
        w.rapi.status.update({7: "success", 8: "success"})
        w.state = MaintState(harep={rid: {"instance": "inst1", "jobs": [7, 8], "start": True}})
        w.round()
        self.assertEqual(
            [c[:3] for c in w.rapi.writes()][0], ("reinstall_instance", "inst1", {"start": True})
        )
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(pending.jobs, (7, 8, 101))
        # A two-job reinstall of this version (recreate, reinstall) just finishes.
        w.rapi.status[101] = "success"
        w.round()
        (result,) = w.repair_tags("inst1")
        self.assertEqual((result.result, result.jobs), (RepairResult.SUCCESS, (7, 8, 101)))

    def test_other_jobs_in_the_queue_are_not_adopted(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        # Someone's failover of inst1 (not maintd's reason), and maintd's own
        # tag job of another instance.
        w.rapi.queue[50] = JobResult(
            50, "running", ops=(OpInfo("OP_INSTANCE_FAILOVER", "inst1", ("operator",)),)
        )
        w.rapi.queue[51] = JobResult(
            51, "running", ops=(OpInfo("OP_INSTANCE_FAILOVER", "other", (reason("other"),)),)
        )
        w.rapi.status.update({50: "running", 51: "running"})
        w.round()
        self.assertEqual([c[0] for c in w.rapi.writes()], ["failover_instance", "add_tags"])

    def test_record_without_tag_job_is_tagged_from_the_store(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        w.rapi.tag_job_status = "error"
        w.round()
        self.assertEqual([c[0] for c in w.rapi.writes()], ["failover_instance", "add_tags"])
        self.assertEqual(w.repair_tags("inst1"), [])
        # The tag job failed: the next round writes the tag again, no new repair.
        w.rapi.tag_job_status = "success"
        ctx = w.round()
        self.assertEqual(
            [c[0] for c in w.rapi.writes()], ["failover_instance", "add_tags", "add_tags"]
        )
        self.assertEqual(ctx.notes[0]["harep"], "retag")
        (pending,) = w.repair_tags("inst1")
        self.assertEqual(pending.jobs, (101,))

    def test_queued_pending_tag_job_waits(self) -> None:
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        w.rapi.tag_job_status = "running"  # queued behind the repair
        w.round()
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
