"""Interoperability with Ganeti's real ``harep`` (3.0) on tags maintd writes.

harep reads clusters only over Luxi, so these tests serve a cluster through
a small fake Luxi socket (:mod:`tests.harep_luxi`) and run ``harep
--dry-run`` on it: harep must read maintd's tags the way maintd does (pending,
result, enoperm, suspend with and without timestamp) and pick the same
repair type; the tags harep would write must parse with maintd's parser.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.trial.unittest import TestCase

from maintd.decide.harep.decide import Verdict, decide_without_jobs, detect, repair_id, tag_state
from maintd.decide.harep.tags import RepairResult, RepairTag, RepairType, SuspendTag, parse
from tests.harep_fixtures import P, drbd, make_cluster, plain, with_tags
from tests.harep_luxi import FakeLuxi
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
