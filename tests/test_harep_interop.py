"""Interoperability with Ganeti's real ``harep`` (3.0) on tags maintd writes.

harep reads clusters only over Luxi, so these tests serve a cluster through
a small fake Luxi socket (:mod:`tests.harep_luxi`) and run harep on it:
harep must read maintd's tags the way maintd does (pending, result, enoperm,
suspend with and without timestamp) and pick the same repair type; the tags
harep would write must parse with maintd's parser; and, run for real (its
``SubmitManyJobs`` calls recorded), harep submits the same repair opcodes
with the same parameters and the same tag jobs in the same order as maintd
(:class:`SameJobsAsHarepTests`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

import attrs
from twisted.internet import defer, reactor, utils
from twisted.trial.unittest import TestCase

from maintd.decide.harep.decide import Verdict, decide_without_jobs, detect, repair_id, tag_state
from maintd.decide.harep.opcodes import normalise, rapi_job
from maintd.decide.harep.tags import RepairResult, RepairTag, RepairType, SuspendTag, parse
from tests.harep_fixtures import P, drbd, make_cluster, plain, with_tags
from tests.harep_luxi import FakeLuxi
from tests.test_harep_step import World
from tests.tools import find_tool

NOW = 1_700_000_000  # tags' timestamps; harep runs "now" (later), so past suspends are expired


def own_pending(name: str, rtype: RepairType, jobs: tuple[int, ...]) -> str:
    return RepairTag(rtype, repair_id(name, rtype, NOW), NOW, jobs).format()


def own_result(name: str, rtype: RepairType, result: RepairResult) -> str:
    return RepairTag(rtype, repair_id(name, rtype, NOW), NOW, (3,), result).format()


class HarepOutput:
    def __init__(self, out: str, err: str, code: int) -> None:
        self.out, self.err, self.code = out, err, code

    def added_tags(self) -> dict[str, str]:
        """instance -> tag harep would add (its '>>> Adding' lines)."""
        found = re.findall(r">>> Adding the following tag to (\S+):\n\"([^\"]*)\"", self.out)
        return dict(found)

    def counts(self) -> dict[str, int]:
        tail = self.out.split("Instance status count", 1)[-1]
        return {k: int(v) for k, v in re.findall(r"^([A-Za-z ]+): (\d+)$", tail, re.M)}


class InteropTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.harep = find_tool("harep")
        self.tmp = tempfile.mkdtemp(prefix="maintd-luxi-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    @defer.inlineCallbacks
    def run_harep(self, cluster: Any, jobs: dict[int, str] | None = None):  # type: ignore[no-untyped-def]
        sock = os.path.join(self.tmp, "luxi")
        port = reactor.listenUNIX(sock, FakeLuxi(cluster, jobs or {}))
        self.addCleanup(port.stopListening)
        out, err, code = yield utils.getProcessOutputAndValue(
            self.harep, [f"--luxi={sock}", "--dry-run"], env={"PATH": "/usr/bin:/bin"}
        )
        return HarepOutput(out.decode(), err.decode(), code)

    @defer.inlineCallbacks
    def test_harep_reads_maintd_tags_like_maintd(self):  # type: ignore[no-untyped-def]
        healthy = {"primary": "n4", "secondary": "n5"}
        insts = [
            # maintd's pending repair whose job still runs / has finished.
            with_tags(
                drbd("running", **healthy), own_pending("running", RepairType.FAILOVER, (7,))
            ),
            with_tags(
                drbd("finished", **healthy), own_pending("finished", RepairType.FAILOVER, (8,))
            ),
            # maintd's own three-step reinstall, all steps done.
            with_tags(
                drbd("reinst", **healthy), own_pending("reinst", RepairType.REINSTALL, (9, 10, 11))
            ),
            # A failure result keeps harep's hands off a broken instance.
            with_tags(
                drbd("failed"), own_result("failed", RepairType.FAILOVER, RepairResult.FAILURE)
            ),
            # Suspended forever / until a past time.
            with_tags(drbd("susp"), SuspendTag(None).format()),
            with_tags(drbd("expired"), SuspendTag(NOW - 10).format()),
            # enoperm: only fix-storage allowed on the instance.
            with_tags(
                drbd("enoperm"),
                P + "fix-storage",
                own_result("enoperm", RepairType.FAILOVER, RepairResult.ENOPERM),
            ),
        ]
        cluster = make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=insts)
        result = yield self.run_harep(
            cluster, {7: "running", 8: "success", 9: "success", 10: "success", 11: "success"}
        )
        self.assertEqual(result.code, 0, result.out + result.err)
        self.assertIn('Moving finished from "Pending repair" to "Healthy"', result.out)
        self.assertNotIn("Moving running", result.out)
        # harep finds maintd's pending tag by its exact text to replace it.
        self.assertIn(
            ">>> Removing the following tags from finished:\n"
            f'"{own_pending("finished", RepairType.FAILOVER, (8,))}"',
            result.out,
        )
        self.assertIn("Executing ArFailover repair on expired", result.out)
        self.assertRegex(
            result.out, r"Not repairing susp because it's in state .*ArSuspended Forever"
        )
        self.assertIn("Not performing a repair of type ArFailover on enoperm", result.out)
        self.assertNotIn("repair on failed", result.out)
        self.assertEqual(result.counts().get("Failure"), 1)
        self.assertEqual(result.counts().get("Pending repair"), 2)  # running + expired

        # Whatever harep would write, maintd reads the same way.
        added = result.added_tags()
        finished = parse(added["finished"])
        self.assertIsInstance(finished, RepairTag)
        self.assertEqual(
            (finished.result, finished.jobs, finished.id),
            (RepairResult.SUCCESS, (8,), repair_id("finished", RepairType.FAILOVER, NOW)),
        )
        pending = parse(added["expired"])
        self.assertEqual(
            (pending.type, pending.result, pending.jobs), (RepairType.FAILOVER, None, ())
        )
        enoperm = parse(added["enoperm"])
        self.assertEqual(
            (enoperm.type, enoperm.result), (RepairType.FAILOVER, RepairResult.ENOPERM)
        )

        # maintd's own decisions on the same cluster agree.
        free = frozenset(cluster.nodes)
        verdicts = {
            i.name: decide_without_jobs(
                cluster, i, tag_state(i.name, i.tags), NOW + 100, free
            ).verdict
            for i in cluster.instances.values()
            if tag_state(i.name, i.tags).current is None
            or not tag_state(i.name, i.tags).current.pending
        }
        self.assertEqual(verdicts["expired"], Verdict.REPAIR)
        self.assertEqual(verdicts["susp"], Verdict.SUSPENDED)
        self.assertEqual(verdicts["failed"], Verdict.FAILED)
        # harep rewrites the enoperm tag each run; maintd keeps the one it has.
        self.assertEqual(verdicts["enoperm"], Verdict.ENOPERM_KNOWN)

    @defer.inlineCallbacks
    def test_same_repair_type_as_harep_for_offline_nodes(self):  # type: ignore[no-untyped-def]
        cases = {
            "both": (drbd("both", "n2", "n3"), "ArReinstall"),
            "prim": (drbd("prim", "n2", "n4"), "ArFailover"),
            "sec": (drbd("sec", "n4", "n3"), "ArFixStorage"),
            "plainoff": (plain("plainoff", "n2"), "ArReinstall"),
            "fine": (drbd("fine", "n4", "n5"), None),
        }
        cluster = make_cluster(
            offline=["n2", "n3"],
            cluster_tags=[P + "reinstall"],
            instances=[inst for inst, _ in cases.values()],
        )
        result = yield self.run_harep(cluster)
        self.assertEqual(result.code, 0, result.out + result.err)
        wire = {
            RepairType.FIX_STORAGE: "ArFixStorage",
            RepairType.MIGRATE: "ArMigrate",
            RepairType.FAILOVER: "ArFailover",
            RepairType.REINSTALL: "ArReinstall",
        }
        for name, (inst, harep_type) in cases.items():
            found = detect(cluster, inst)
            ours = wire[found.repair.rtype] if found else None
            self.assertEqual(ours, harep_type, name)
            if harep_type:
                self.assertIn(f"Executing {harep_type} repair on {name}\n", result.out)
            else:
                self.assertNotIn(f"repair on {name}\n", result.out)


# --- the jobs and tags themselves, opcode by opcode ---------------------------

#: Opcodes RAPI's reinstall job adds around harep's reinstall opcode: Ganeti
#: reinstalls only instances marked down (harep's own job fails on an
#: instance marked up), and starts it again when it was up.
RAPI_REINSTALL_EXTRAS = ("OP_INSTANCE_SHUTDOWN", "OP_INSTANCE_STARTUP")


def tag_shape(text: str, repair_jobs: set[int], old: set[str]) -> Any:
    """A tag with what differs between two tools taken out: a pre-existing tag
    stays as it is; a repair tag keeps type, state and whether its job ids
    are exactly the repair's jobs (ids, uuids and times are each tool's own)."""
    if text in old:
        return text
    tag = parse(text)
    assert isinstance(tag, RepairTag), text
    state = "pending" if tag.result is None else tag.result.wire
    return (tag.type.wire, state, set(tag.jobs) == repair_jobs and bool(repair_jobs))


class Run:
    """One tool's run: its jobs as (job id, normalised opcodes), in order."""

    def __init__(self, jobs: list[tuple[int, list[dict[str, Any]]]]) -> None:
        self.jobs = jobs

    def repair_jobs(self) -> set[int]:
        return {j for j, ops in self.jobs if not ops[0]["OP_ID"].startswith("OP_TAGS_")}

    def repair_opcodes(self) -> list[dict[str, Any]]:
        return [op for _, ops in self.jobs for op in ops if not op["OP_ID"].startswith("OP_TAGS_")]

    def tag_steps(self, repair_jobs: set[int], old: set[str]) -> list[tuple[str, list[Any]]]:
        return [
            (ops[0]["OP_ID"], [tag_shape(t, repair_jobs, old) for t in ops[0]["tags"]])
            for _, ops in self.jobs
            if ops[0]["OP_ID"].startswith("OP_TAGS_")
        ]

    def tags_added(self) -> list[str]:
        return [
            t for _, ops in self.jobs if ops[0]["OP_ID"] == "OP_TAGS_SET" for t in ops[0]["tags"]
        ]


class SameJobsAsHarepTests(TestCase):
    """Real harep 3.0 (run for real against the fake Luxi socket, its
    ``SubmitManyJobs`` calls recorded) and maintd's harep step (its RAPI
    writes mapped to the opcodes rlib2 makes of them) on the same cluster:
    the same repair opcodes with the same parameters, and the same tag jobs
    in the same order, through a whole repair."""

    timeout = 180

    def setUp(self) -> None:
        self.harep = find_tool("harep")
        self.tmp = tempfile.mkdtemp(prefix="maintd-luxi-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.runs = 0

    @defer.inlineCallbacks
    def harep_run(self, cluster: Any, jobs: dict[int, str] | None = None):  # type: ignore[no-untyped-def]
        self.runs += 1
        sock = os.path.join(self.tmp, f"luxi{self.runs}")
        luxi = FakeLuxi(cluster, jobs or {})
        luxi.next_job = 1000 * self.runs
        port = reactor.listenUNIX(sock, luxi)
        self.addCleanup(port.stopListening)
        # --job-delay=0: no OpTestDelay before the repair opcodes (harep's way
        # to let its tag job pass first; RAPI has no such opcode).
        out, err, code = yield utils.getProcessOutputAndValue(
            self.harep, [f"--luxi={sock}", "--job-delay=0"], env={"PATH": "/usr/bin:/bin"}
        )
        self.assertEqual(code, 0, (out + err).decode())
        return Run([(j, [normalise(op) for op in ops]) for j, ops in luxi.submitted])

    def maintd_round(self, world: World) -> Run:
        start = len(world.rapi.calls)
        world.round()
        jobs: list[tuple[int, list[dict[str, Any]]]] = []
        writes = [c for c in world.rapi.calls[start:] if c[0] not in ("wait_jobs", "jobs_bulk")]
        if not writes:
            return Run(jobs)
        for (method, name, args), job in zip(
            writes, world.rapi.job_order[-len(writes) :], strict=True
        ):
            jobs.append((job, rapi_job(method, name, args)))
        return Run(jobs)

    @defer.inlineCallbacks
    def check(self, inst: Any, offline: list[str], old: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
        inst = with_tags(inst, *old)
        cluster = make_cluster(offline=offline, cluster_tags=[P + "reinstall"], instances=[inst])
        # 1. The repair: its job(s), then one pending tag (and the old tag removed).
        theirs = yield self.harep_run(cluster)
        world = World(cluster)
        ours = self.maintd_round(world)
        h_ops, m_ops = theirs.repair_opcodes(), ours.repair_opcodes()
        m_ops = [op for op in m_ops if op["OP_ID"] not in RAPI_REINSTALL_EXTRAS]
        self.assertEqual(m_ops, h_ops)
        self.assertTrue(h_ops)
        h_repair, m_repair = theirs.repair_jobs(), ours.repair_jobs()
        steps = theirs.tag_steps(h_repair, set(old))
        self.assertEqual(ours.tag_steps(m_repair, set(old)), steps)
        self.assertEqual(steps[0][0], "OP_TAGS_SET")
        # Jobs before tags, in both.
        self.assertEqual(
            [j for j, ops in ours.jobs if ops[0]["OP_ID"].startswith("OP_TAGS_")],
            [j for j, _ in ours.jobs][len(m_repair) :],
        )
        # 2. The jobs succeeded (and the nodes are back): the result tag, then the
        # pending tag removed.
        (h_pending,) = theirs.tags_added()
        (m_pending,) = ours.tags_added()
        healed = make_cluster(
            cluster_tags=[P + "reinstall"],
            instances=[attrs.evolve(inst, tags=frozenset({h_pending}))],
        )
        theirs2 = yield self.harep_run(healed, {j: "success" for j in h_repair})
        for j in m_repair:
            world.rapi.status[j] = "success"
        world.cluster = attrs.evolve(
            world.cluster,
            nodes={n: attrs.evolve(node, offline=False) for n, node in world.cluster.nodes.items()},
        )
        ours2 = self.maintd_round(world)
        steps2 = theirs2.tag_steps(h_repair, {h_pending})
        self.assertEqual(
            [(op, [("pending" if t == h_pending else t) for t in tags]) for op, tags in steps2],
            [
                (op, [("pending" if t == m_pending else t) for t in tags])
                for op, tags in ours2.tag_steps(m_repair, {m_pending})
            ],
        )
        self.assertEqual([s[0] for s in steps2], ["OP_TAGS_SET", "OP_TAGS_DEL"])
        self.assertEqual(theirs2.repair_opcodes(), [])
        return len(theirs.tag_steps(h_repair, set())) + len(steps2)

    @defer.inlineCallbacks
    def test_offline_primary_failover(self):  # type: ignore[no-untyped-def]
        count = yield self.check(drbd("prim", "n2", "n4"), ["n2"])
        self.assertEqual(count, 3)

    @defer.inlineCallbacks
    def test_offline_secondary_replace_disks_by_iallocator(self):  # type: ignore[no-untyped-def]
        count = yield self.check(drbd("sec", "n4", "n3"), ["n3"])
        self.assertEqual(count, 3)

    @defer.inlineCallbacks
    def test_drbd_both_offline_recreate_and_reinstall(self):  # type: ignore[no-untyped-def]
        yield self.check(drbd("both", "n2", "n3"), ["n2", "n3"])

    @defer.inlineCallbacks
    def test_plain_offline_primary_recreate_and_reinstall(self):  # type: ignore[no-untyped-def]
        yield self.check(plain("plainoff", "n2"), ["n2"])

    @defer.inlineCallbacks
    def test_previous_result_removed_in_the_pending_step(self):  # type: ignore[no-untyped-def]
        old = RepairTag(RepairType.FAILOVER, "older", NOW - 5000, (3,), RepairResult.SUCCESS)
        count = yield self.check(drbd("prim", "n2", "n4"), ["n2"], (old.format(),))
        self.assertEqual(count, 4)
