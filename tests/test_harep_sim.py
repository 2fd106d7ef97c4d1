"""harep end to end: real rounds (jobs -> snapshot -> harep) against the simulator.

Each test starts an :class:`~maintd.sim.embed.EmbeddedSimulator` (jobs take
0.05 s of real time) and talks to it with the real :class:`RapiClient` over
pinned TLS on 127.0.0.1.  A round's first step waits (bounded) for the jobs
of the round before, so each round sees the previous round's work done.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from maintd.daemon.config import DaemonConfig
from maintd.daemon.round import RoundContext, run_round
from maintd.daemon.state import MaintState
from maintd.daemon.steps.harep import harep_step
from maintd.daemon.steps.jobs import jobs_step
from maintd.daemon.steps.snapshot import snapshot_step
from maintd.decide.harep.decide import repair_id
from maintd.decide.harep.tags import RepairResult, RepairTag, RepairType, parse
from maintd.sim import scenario as scenario_mod
from tests.simulators import client_for, free_port, start_simulator

P = "ganeti:watcher:autorepair:"


def scenario(
    nodes: int = 6,
    offline: tuple[str, ...] = (),
    drained: tuple[str, ...] = (),
    instances: list[dict[str, Any]] | None = None,
    cluster_tags: tuple[str, ...] = (),
    group_tags: tuple[str, ...] = (),
) -> scenario_mod.Scenario:
    doc = {
        "name": "harep.sim.test",
        "master": "n1",
        "tags": list(cluster_tags),
        "groups": [{"name": "g1", "tags": list(group_tags)}],
        "nodes": [
            {
                "name": f"n{i}",
                "group": "g1",
                "offline": f"n{i}" in offline,
                "drained": f"n{i}" in drained,
            }
            for i in range(1, nodes + 1)
        ],
        "instances": instances or [],
    }
    return scenario_mod.from_scenario(doc, "harep-test")


class SimHarness:
    def __init__(self, test: TestCase, scen: scenario_mod.Scenario) -> None:
        workdir = test.mktemp()
        self.sim = start_simulator(test, workdir, loaded=scen, job_seconds=0.05, mond=False)
        self.rapi = client_for(test, self.sim)
        self.state = MaintState()
        self.state_dir = test.mktemp()
        self.number = 0

    async def round(self, *, steps: Any = None, **cfg: Any) -> RoundContext:
        """One round of ``steps`` (default: jobs, snapshot, harep) with config ``cfg``."""
        self.number += 1
        config = DaemonConfig.for_tests(state_dir=self.state_dir, job_wait=30.0, **cfg)
        ctx = RoundContext(
            number=self.number,
            now=time.time(),
            config=config,
            reactor=reactor,
            state=self.state,
            rapi=self.rapi,
        )
        await run_round(ctx, steps or [jobs_step, snapshot_step, harep_step])
        self.state = ctx.state
        return ctx

    async def settle(self) -> None:
        """Wait for every job of the last round (as the next round would)."""
        if self.state.jobs:
            await self.rapi.wait_jobs(list(self.state.jobs), timeout=30.0)

    async def instance(self, name: str) -> dict[str, Any]:
        for inst in await self.rapi.instances_bulk():
            if inst["name"] == name:
                return inst
        raise KeyError(name)

    async def repair_tags(self, name: str) -> list[RepairTag]:
        out = []
        for text in await self.rapi.tags("instance", name):
            tag = parse(text)
            if isinstance(tag, RepairTag):
                out.append(tag)
        return out


def drbd(name: str, primary: str, secondary: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "primary": primary, "secondary": secondary, "disk_template": "drbd", **kw}


def plain(name: str, primary: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "primary": primary, "disk_template": "plain", **kw}


def harep_notes(ctx: RoundContext, name: str) -> list[dict[str, Any]]:
    return [n for n in ctx.notes if n.get("step") == "harep" and n.get("instance") == name]


class DetectionRulesTests(TestCase):
    timeout = 120

    async def _single_job_repair(
        self, scen: scenario_mod.Scenario, name: str, rtype: RepairType
    ) -> tuple[SimHarness, RepairTag, dict[str, Any]]:
        """Round 1 starts the repair; round 2 records success. Returns the harness,
        the pending tag seen after round 1 and the instance before round 1."""
        h = SimHarness(self, scen)
        before = await h.instance(name)
        self.assertEqual(await h.repair_tags(name), [])
        ctx = await h.round()
        (note,) = [n for n in harep_notes(ctx, name) if n["harep"] == "repair"]
        # harep's order: the repair job, then the pending tag naming it.
        repair_job, tag_job = note["jobs"]
        self.assertLess(repair_job, tag_job)
        await h.settle()
        self.assertTrue((await h.rapi.get_job(tag_job)).ok)
        (pending,) = await h.repair_tags(name)
        self.assertEqual((pending.type, pending.result, pending.jobs), (rtype, None, (repair_job,)))
        self.assertEqual(pending.id, repair_id(name, rtype, pending.ts))
        self.assertTrue((await h.rapi.get_job(repair_job)).ok)
        await h.round()
        await h.settle()
        (result,) = await h.repair_tags(name)
        self.assertEqual(
            (result.type, result.id, result.result, result.jobs),
            (rtype, pending.id, RepairResult.SUCCESS, (repair_job,)),
        )
        self.assertEqual(h.state.harep, {})
        # Three tag jobs for the whole repair, in harep's order: pending
        # (after the repair job), result, removal of the pending tag.
        tag_jobs = [
            j.ops[0].op_id
            for j in await h.rapi.jobs_bulk()
            if j.ops and j.ops[0].op_id.startswith("OP_TAGS_")
        ]
        self.assertEqual(tag_jobs, ["OP_TAGS_SET", "OP_TAGS_SET", "OP_TAGS_DEL"])
        return h, pending, before

    @defer.inlineCallbacks
    def test_offline_primary_fails_over(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            offline=("n2",), instances=[drbd("web", "n2", "n3")], cluster_tags=(P + "failover",)
        )
        h, _, _ = yield defer.ensureDeferred(
            self._single_job_repair(scen, "web", RepairType.FAILOVER)
        )
        after = yield defer.ensureDeferred(h.instance("web"))
        self.assertEqual((after["pnode"], after["snodes"]), ("n3", ["n2"]))

    @defer.inlineCallbacks
    def test_offline_secondary_gets_new_secondary(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            offline=("n3",), instances=[drbd("db", "n2", "n3")], cluster_tags=(P + "fix-storage",)
        )
        h, _, _ = yield defer.ensureDeferred(
            self._single_job_repair(scen, "db", RepairType.FIX_STORAGE)
        )
        after = yield defer.ensureDeferred(h.instance("db"))
        self.assertEqual(after["pnode"], "n2")
        (new,) = after["snodes"]
        self.assertNotIn(new, ("n2", "n3"))

    @defer.inlineCallbacks
    def test_drained_primary_migrates_live(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            drained=("n2",), instances=[drbd("app", "n2", "n3")], group_tags=(P + "migrate",)
        )
        h, _, _ = yield defer.ensureDeferred(
            self._single_job_repair(scen, "app", RepairType.MIGRATE)
        )
        after = yield defer.ensureDeferred(h.instance("app"))
        self.assertEqual((after["pnode"], after["snodes"]), ("n3", ["n2"]))
        self.assertEqual(after["admin_state"], "up")

    async def _reinstall(
        self, scen: scenario_mod.Scenario, name: str
    ) -> tuple[SimHarness, dict[str, Any]]:
        h = SimHarness(self, scen)
        ctx = await h.round()
        (note,) = [n for n in harep_notes(ctx, name) if n["harep"] == "repair"]
        methods = [op.split("(")[0] for op in note["ops"]]
        # harep's recreate+reinstall job as two consecutive RAPI jobs, then one tag.
        self.assertEqual(methods, ["recreate_disks", "reinstall_instance"])
        self.assertIn("iallocator='hail'", note["ops"][0])
        await h.settle()
        (pending,) = await h.repair_tags(name)
        self.assertIsNone(pending.result)
        jobs = list(pending.jobs)
        self.assertEqual(jobs, note["jobs"][:2])
        await h.round()
        await h.settle()
        (result,) = await h.repair_tags(name)
        self.assertEqual(
            (result.type, result.result, list(result.jobs)),
            (RepairType.REINSTALL, RepairResult.SUCCESS, jobs),
        )
        self.assertEqual(len(jobs), 2)
        return h, await h.instance(name)

    @defer.inlineCallbacks
    def test_drbd_both_nodes_offline_is_reinstalled(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            offline=("n2", "n3"),
            instances=[drbd("old", "n2", "n3")],
            cluster_tags=(P + "reinstall",),
        )
        _, after = yield defer.ensureDeferred(self._reinstall(scen, "old"))
        nodes = {after["pnode"], *after["snodes"]}
        self.assertEqual(len(nodes), 2)
        self.assertFalse(nodes & {"n2", "n3"})
        self.assertEqual(after["admin_state"], "up")

    @defer.inlineCallbacks
    def test_plain_offline_primary_is_reinstalled(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            offline=("n2",), instances=[plain("scratch", "n2")], cluster_tags=(P + "reinstall",)
        )
        _, after = yield defer.ensureDeferred(self._reinstall(scen, "scratch"))
        self.assertNotEqual(after["pnode"], "n2")
        self.assertEqual(after["admin_state"], "up")


class PolicyTests(TestCase):
    timeout = 120

    async def one_round(
        self, scen: scenario_mod.Scenario, name: str
    ) -> tuple[SimHarness, RoundContext]:
        h = SimHarness(self, scen)
        ctx = await h.round()
        await h.settle()
        return h, ctx

    @defer.inlineCallbacks
    def test_beyond_allowed_records_enoperm_without_job(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            offline=("n2",), instances=[drbd("web", "n2", "n3")], cluster_tags=(P + "fix-storage",)
        )
        h, ctx = yield defer.ensureDeferred(self.one_round(scen, "web"))
        (tag,) = yield defer.ensureDeferred(h.repair_tags("web"))
        self.assertEqual(
            (tag.type, tag.result, tag.jobs), (RepairType.FAILOVER, RepairResult.ENOPERM, ())
        )
        (note,) = harep_notes(ctx, "web")
        self.assertEqual(len(note["jobs"]), 1)  # the tag job only
        after = yield defer.ensureDeferred(h.instance("web"))
        self.assertEqual(after["pnode"], "n2")
        # Next round: nothing new.
        ctx = yield defer.ensureDeferred(h.round())
        self.assertEqual(harep_notes(ctx, "web")[0]["harep"], "enoperm-known")
        self.assertEqual(len((yield defer.ensureDeferred(h.repair_tags("web")))), 1)

    @defer.inlineCallbacks
    def test_suspend_forever_and_until_future(self):  # type: ignore[no-untyped-def]
        future = int(time.time()) + 3600
        scen = scenario(
            offline=("n2",),
            instances=[
                drbd("forever", "n2", "n3", tags=[P + "suspend"]),
                drbd("later", "n2", "n4", tags=[P + f"suspend:{future}"]),
                drbd("expired", "n2", "n5", tags=[P + f"suspend:{future - 7200}"]),
            ],
            cluster_tags=(P + "failover",),
        )
        h, ctx = yield defer.ensureDeferred(self.one_round(scen, ""))
        for name, pnode in (("forever", "n2"), ("later", "n2"), ("expired", "n5")):
            after = yield defer.ensureDeferred(h.instance(name))
            self.assertEqual(after["pnode"], pnode, name)
        self.assertEqual(harep_notes(ctx, "forever")[0]["harep"], "suspended")
        self.assertIn(f"until {future}", harep_notes(ctx, "later")[0]["message"])
        self.assertEqual((yield defer.ensureDeferred(h.repair_tags("forever"))), [])

    @defer.inlineCallbacks
    def test_instance_beats_group_beats_cluster(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            nodes=8,
            offline=("n2",),
            instances=[
                # The instance's fix-storage beats the group's reinstall: enoperm.
                drbd("narrow", "n2", "n3", tags=[P + "fix-storage"]),
                # No instance tag: the group's reinstall beats the cluster's suspend.
                drbd("grouped", "n2", "n4"),
                # The instance's suspend beats the group's reinstall.
                drbd("paused", "n2", "n5", tags=[P + "suspend"]),
            ],
            group_tags=(P + "reinstall",),
            cluster_tags=(P + "suspend",),
        )
        h, ctx = yield defer.ensureDeferred(self.one_round(scen, ""))
        verdicts = {n: harep_notes(ctx, n)[0]["harep"] for n in ("narrow", "grouped", "paused")}
        self.assertEqual(
            verdicts, {"narrow": "enoperm", "grouped": "repair", "paused": "suspended"}
        )
        grouped = yield defer.ensureDeferred(h.instance("grouped"))
        self.assertEqual(grouped["pnode"], "n4")

    @defer.inlineCallbacks
    def test_cluster_policy_applies_without_nearer_tags(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            offline=("n2",), instances=[drbd("a", "n2", "n3")], cluster_tags=(P + "suspend",)
        )
        h, ctx = yield defer.ensureDeferred(self.one_round(scen, ""))
        self.assertEqual(harep_notes(ctx, "a")[0]["harep"], "suspended")

    @defer.inlineCallbacks
    def test_dry_run_changes_nothing_and_publishes_the_plan(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            offline=("n2",), instances=[drbd("web", "n2", "n3")], cluster_tags=(P + "failover",)
        )
        h = SimHarness(self, scen)
        ctx = yield defer.ensureDeferred(h.round(dry_run=True))
        (note,) = harep_notes(ctx, "web")
        self.assertEqual((note["harep"], note["dry_run"]), ("repair", True))
        self.assertIn("failover_instance(web", note["ops"][0])
        self.assertIn("pending:failover:", note["add_tag"])
        self.assertEqual((yield defer.ensureDeferred(h.repair_tags("web"))), [])
        self.assertEqual(h.state.jobs, ())
        self.assertIn(note, h.state.last_round["notes"])
        after = yield defer.ensureDeferred(h.instance("web"))
        self.assertEqual(after["pnode"], "n2")


class RealHarepTakesOverTests(TestCase):
    """After maintd's rounds, the real harep reads the cluster's tags as maintd does."""

    timeout = 120

    async def harep_on(self, h: SimHarness, jobs: dict[int, str]) -> str:
        import os
        import shutil
        import tempfile

        from twisted.internet import utils

        from tests.harep_luxi import FakeLuxi
        from tests.tools import find_tool

        harep = find_tool("harep")
        tmp = tempfile.mkdtemp(prefix="maintd-luxi-", dir="/tmp")
        self.addCleanup(shutil.rmtree, tmp, True)
        sock = os.path.join(tmp, "luxi")
        cluster = await h.rapi.load_cluster()
        port = reactor.listenUNIX(sock, FakeLuxi(cluster, jobs))
        self.addCleanup(port.stopListening)
        out, err, code = await utils.getProcessOutputAndValue(
            harep, [f"--luxi={sock}", "--dry-run"], env={"PATH": "/usr/bin:/bin"}
        )
        self.assertEqual(code, 0, (out + err).decode())
        return out.decode()

    @defer.inlineCallbacks
    def test_harep_follows_a_repair_maintd_started(self):  # type: ignore[no-untyped-def]
        scen = scenario(
            offline=("n2",), instances=[drbd("web", "n2", "n3")], cluster_tags=(P + "failover",)
        )
        h = SimHarness(self, scen)
        ctx = yield defer.ensureDeferred(h.round())
        yield defer.ensureDeferred(h.settle())
        (note,) = harep_notes(ctx, "web")
        repair_job = note["jobs"][0]
        (pending,) = yield defer.ensureDeferred(h.repair_tags("web"))
        # While the job runs harep leaves the repair alone ...
        out = yield defer.ensureDeferred(self.harep_on(h, {repair_job: "running"}))
        self.assertIn("Pending repair: 1", out)
        self.assertNotIn("Executing", out)
        # ... and once it is done harep would close it exactly as maintd does.
        out = yield defer.ensureDeferred(self.harep_on(h, {repair_job: "success"}))
        self.assertIn('Moving web from "Pending repair" to "Healthy"', out)
        self.assertIn(
            f'"{pending.format()}"', out.split("Removing the following tags from web", 1)[1]
        )
        yield defer.ensureDeferred(h.round())
        yield defer.ensureDeferred(h.settle())
        (result,) = yield defer.ensureDeferred(h.repair_tags("web"))
        self.assertEqual(result.result, RepairResult.SUCCESS)
        # The old primary is now an offline secondary: both harep and maintd
        # go on with fix-storage (the design's failover-then-replace-disks).
        out = yield defer.ensureDeferred(self.harep_on(h, {}))
        self.assertIn("Executing ArFixStorage repair on web\n", out)
        ctx = yield defer.ensureDeferred(h.round())
        (note,) = harep_notes(ctx, "web")
        self.assertEqual((note["harep"], note["type"]), ("repair", "fix-storage"))
        self.assertIn("replace_disks(web", note["ops"][0])


class WithIncidentHandlingTests(TestCase):
    """harep inside the full default round: nodes under an incident are not its to touch."""

    timeout = 180

    @defer.inlineCallbacks
    def test_instances_on_an_evacuated_node_are_left_to_incident_handling(self):  # type: ignore[no-untyped-def]
        from maintd.cluster.mond import MondClient
        from maintd.daemon.steps import default_steps

        doc = {
            "name": "harep.sim.test",
            "master": "n1",
            "tags": [P + "migrate"],
            "groups": [{"name": "g1"}],
            "nodes": [{"name": f"n{i}", "group": "g1"} for i in range(1, 7)],
            "instances": [
                drbd("busy", "n4", "n5"),
                # n3 is drained by the admin: harep's to repair (migrate).
                drbd("mine", "n3", "n6"),
            ],
        }
        doc["nodes"][3]["diagnose"] = {"status": "evacuate", "command": "", "details": "test"}
        doc["nodes"][2]["drained"] = True
        scen = scenario_mod.from_scenario(doc, "harep-incident-test")
        port = free_port()
        workdir = self.mktemp()
        sim = start_simulator(self, workdir, loaded=scen, job_seconds=0.05, mond_port=port)
        rapi = client_for(self, sim)
        mond = MondClient(reactor, port=port, timeout=5.0)
        self.addCleanup(lambda: defer.ensureDeferred(mond.close()))
        state = MaintState()
        config = DaemonConfig.for_tests(state_dir=self.mktemp(), job_wait=30.0, mond_port=port)
        steps = [s for s in default_steps(config) if "balance" not in getattr(s, "__name__", "")]
        self.assertIn(harep_step, steps)
        busy_tags: list[str] = []
        mine_repairs: list[str] = []
        busy_verdicts: list[str] = []
        mine_blocked: list[str] = []
        for number in range(1, 6):
            ctx = RoundContext(
                number=number,
                now=time.time(),
                config=config,
                reactor=reactor,
                state=state,
                rapi=rapi,
                mond=mond,
            )
            yield defer.ensureDeferred(run_round(ctx, steps))
            state = ctx.state
            if state.jobs:
                yield defer.ensureDeferred(rapi.wait_jobs(list(state.jobs), timeout=30.0))
            busy_tags.extend((yield defer.ensureDeferred(rapi.tags("instance", "busy"))))
            # harep never plans on the node the incident claimed.
            for note in harep_notes(ctx, "busy"):
                busy_verdicts.append(note["harep"])
                self.assertNotIn(note["harep"], ("repair", "continue", "enoperm"), note)
            mine_blocked += [
                n["message"] for n in harep_notes(ctx, "mine") if n["harep"] == "blocked"
            ]
            mine_repairs += [
                n["repair"] for n in harep_notes(ctx, "mine") if n["harep"] == "repair"
            ]
        self.assertTrue(state.incidents, "the evacuate report made an incident")
        # harep saw the drained node under "busy" and kept out of the incident's way.
        self.assertIn("blocked", busy_verdicts)
        self.assertEqual([t for t in busy_tags if t.startswith(P)], [])
        # The admin-drained primary: live migration, then a new secondary
        # for the (now drained) secondary.
        self.assertEqual(mine_repairs, ["migrate", "replace-secondary"])
        # The new secondary is the iallocator's choice in the group: the repair
        # waited while incident handling moved instances to nodes of that group.
        self.assertTrue(any("the iallocator may pick" in m for m in mine_blocked), mine_blocked)
        mine = yield defer.ensureDeferred(rapi.tags("instance", "mine"))
        (result,) = [parse(t) for t in mine if t.startswith(P + "result:")]
        self.assertEqual(
            (result.type, result.result), (RepairType.FIX_STORAGE, RepairResult.SUCCESS)
        )
