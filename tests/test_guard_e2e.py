"""End-to-end guardrails: the real daemon against the embedded simulator (127.0.0.1).

The storm (12 of 40 nodes), a budget of 2 with 5 failing nodes, a full
cluster, the master node, pause by ganeti-maintd-ctl and by the cluster tag
``maintd:pause`` (across a restart), and busy rounds run by the round
service itself.  Rounds are driven one at a time (see tests.test_round_e2e)
except in the busy-round test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from maintd.daemon.state import RepairStatus
from maintd.decide.guardrails import Limit
from maintd.decide.reason import BALANCE, trail_reason
from tests.test_round_e2e import EVACUATE, OK, Daemon, drbd, scenario


def shared(name: str, p: str, memory: int = 1024) -> dict[str, Any]:
    return {"name": name, "primary": p, "disk_template": "rbd", "memory": memory,
            "disks": [10240]}


class Guarded(Daemon):
    async def overview(self) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        r = await treq.get(f"http://127.0.0.1:{self.http_port}/1/overview", pool=pool,
                           timeout=10)
        return await r.json()

    def drained(self) -> set[str]:
        return {n.name for n in self.sim.cluster.nodes.values() if n.drained}

    def by_status(self, status: RepairStatus) -> list[Any]:
        return [i for i in self.state.incidents if i.status == status]

    async def cluster_tag(self, tag: str, add: bool) -> None:
        """As gnt-cluster add-tags / remove-tags: through RAPI, waiting for the job."""
        rapi = self.daemon.rounds.round_fn.rapi
        fn = rapi.add_tags if add else rapi.remove_tags
        jid = await fn("cluster", None, [tag], reason="operator")
        result = await rapi.wait_jobs([jid], 10)
        self.test.assertTrue(result[jid].ok, result)


class GuardrailTests(TestCase):
    timeout = 240

    async def daemon(self, spec: dict[str, Any], **config: Any) -> Guarded:
        d = Guarded(self, spec, **config)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
        await d.start()
        return d

    def run_async(self, fn: Callable[[], Any]) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(fn())

    def error_lines(self) -> list[str]:
        lines: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            level = event.get("log_level")
            if level is not None and level.name == "error":
                lines.append(str(event.get("log_format", "")))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return lines

    # -- the storm -----------------------------------------------------------

    def test_storm_of_12_in_40(self) -> defer.Deferred[None]:
        return self.run_async(self._storm)

    async def _storm(self) -> None:
        errors = self.error_lines()
        insts = [drbd(f"i{k}", f"n{k}", f"n{k % 40 + 1}") for k in range(1, 41)]
        failing = {f"n{k}": EVACUATE for k in range(2, 14)}  # 12 nodes, not the master
        d = await self.daemon(scenario(insts, failing, nodes=40))
        for _ in range(3):
            await d.round()
        self.assertEqual(d.drained(), set(), "nothing drained during the storm")
        self.assertEqual(d.jobs(), [], "no job at all")
        ov = await d.overview()
        self.assertEqual(ov["storm-breaker"], {"tripped": True, "reporting": 12, "threshold": 4})
        self.assertEqual(ov["incidents"]["noted"], 12)
        self.assertEqual(ov["evacuating"], 0)
        self.assertEqual(len([e for e in errors if "storm breaker tripped" in e]), 1,
                         "said once at error level")
        status = await d.http_status()
        self.assertTrue(all("storm breaker tripped" in s["reason"] for s in status), status)
        code, out, err = await d.ctl("status")
        self.assertEqual(code, 0, err)
        self.assertIn("TRIPPED: 12 node(s) reporting a problem, threshold 4", out)
        # the broken diagnose script is fixed everywhere but on one node
        for k in range(3, 14):
            d.sim.sim.set_diagnose(f"n{k}", OK)
        await d.round()
        ov = await d.overview()
        self.assertEqual(ov["storm-breaker"], {"tripped": False, "reporting": 1, "threshold": 4})
        # what the storm left on the healthy nodes is canceled or dropped
        # (never acted on); n2 still reports: its evacuation starts, alone
        healthy = {f"n{k}" for k in range(3, 14)}
        left = [i for i in d.state.incidents if i.node_name in healthy]
        self.assertFalse([i for i in left if i.status != RepairStatus.CANCELED], left)
        await d.rounds_until(lambda: d.incidents("n2")[0].status == RepairStatus.COMPLETED)
        self.assertEqual(d.drained(), {"n2"})
        self.assertEqual([i.node_name for i in d.state.incidents], ["n2"],
                         "the storm's incidents are forgotten")

    def test_release(self) -> defer.Deferred[None]:
        return self.run_async(self._release)

    async def _release(self) -> None:
        insts = [shared(f"r{k}", f"n{k}") for k in range(2, 6)]
        d = await self.daemon(scenario(insts, {f"n{k}": EVACUATE for k in range(2, 6)}, nodes=8),
                              max_evacuating=Limit(count=4))
        self.assertTrue((await d.overview())["storm-breaker"]["tripped"])
        self.assertEqual(d.drained(), set())
        code, out, err = await d.ctl("release")
        self.assertEqual(code, 0, err)
        self.assertIn("Storm breaker released", out)
        await d.round()
        await d.wait_jobs_done()
        self.assertFalse((await d.overview())["storm-breaker"]["tripped"])
        self.assertEqual(d.drained(), {"n2", "n3", "n4", "n5"},
                         [(i.node_name, i.status, i.reason) for i in d.state.incidents])

    # -- the budget ----------------------------------------------------------

    def test_budget_of_2_with_5_failing(self) -> defer.Deferred[None]:
        return self.run_async(self._budget)

    async def _budget(self) -> None:
        failing = [f"n{k}" for k in range(2, 7)]
        insts = [drbd(f"a{k}", f"n{k}", f"n{k + 5}") for k in range(2, 7)]
        insts += [shared(f"s{k}", f"n{k}") for k in range(2, 7)]
        d = await self.daemon(scenario(insts, {n: EVACUATE for n in failing}, nodes=12),
                              max_evacuating=Limit(count=2), storm_threshold=Limit(count=5))
        max_seen = 0
        order: list[str] = []
        for _ in range(60):
            if len(d.by_status(RepairStatus.COMPLETED)) == 5:
                break
            await d.round()
            await d.wait_jobs_done()
            under = {n for n in d.drained() if any(
                i.status != RepairStatus.COMPLETED for i in d.incidents(n))}
            max_seen = max(max_seen, len(under))
            self.assertLessEqual(len(under), 2, f"drained and not done: {under}")
            self.assertLessEqual((await d.overview())["evacuating"], 2)
            order += [n for n in sorted(under) if n not in order]
            for inc in d.by_status(RepairStatus.NOTED):
                if "waiting for an evacuation slot" not in inc.reason:
                    continue
                self.assertIn("2 of at most 2 node(s) under evacuation", inc.reason)
        self.assertEqual(len(d.by_status(RepairStatus.COMPLETED)), 5, "all complete in turn")
        self.assertEqual(max_seen, 2)
        self.assertEqual(sorted(order), failing)
        for inst in d.sim.cluster.instances.values():
            self.assertFalse({inst.primary, *inst.secondaries} & set(failing), inst.name)

    # -- a full cluster, the master ------------------------------------------

    def test_full_cluster(self) -> defer.Deferred[None]:
        return self.run_async(self._full)

    async def _full(self) -> None:
        # 4 nodes of 8 GiB; every node but n4 runs 6.5 GiB of instances
        big = {"mtotal": 8192, "mnode": 512}
        insts = [drbd("inst-12", "n4", "n2"), drbd("f1", "n1", "n3"), drbd("f2", "n2", "n1"),
                 drbd("f3", "n3", "n2")]
        for i in insts[1:]:
            i["memory"] = 6656
        nodes = {f"n{k}": big for k in range(1, 5)}
        d = await self.daemon(scenario(insts, {"n4": EVACUATE}, nodes=4, **nodes))
        await d.round()
        self.assertEqual(d.drained(), set(), "no drain")
        self.assertEqual(d.jobs(), [])
        [inc] = d.incidents("n4")
        self.assertEqual(inc.status, RepairStatus.NOTED)
        self.assertIn("cannot evacuate n4: no room for instance inst-12", inc.reason)
        [shown] = await d.http_status()
        self.assertEqual(shown["reason"], inc.reason)
        notes = d.state.last_round["notes"]
        self.assertTrue(any("cannot evacuate n4" in str(n.get("plan", "")) for n in notes), notes)
        code, out, _ = await d.ctl("list")
        self.assertIn("cannot evacuate n4", out)

    def test_master_then_role_moved(self) -> defer.Deferred[None]:
        return self.run_async(self._master)

    async def _master(self) -> None:
        d = await self.daemon(scenario([shared("r1", "n1")], {"n1": EVACUATE}, nodes=4))
        await d.round()
        self.assertEqual(d.jobs(), [], "no job on the master")
        [inc] = d.incidents("n1")
        self.assertEqual(inc.status, RepairStatus.NOTED)
        self.assertIn("move the master role first", inc.reason)
        # gnt-cluster master-failover on n2
        cl = d.sim.cluster
        cl.nodes["n1"].master = False
        cl.nodes["n2"].master = cl.nodes["n2"].master_candidate = True
        cl.master = "n2"
        cl.changed()
        await d.round()
        await d.wait_jobs_done()
        self.assertTrue(d.node("n1").drained, d.incidents("n1"))
        await d.rounds_until(lambda: d.incidents("n1")[0].status == RepairStatus.COMPLETED)
        self.assertTrue(d.node("n1").drained)
        self.assertNotEqual(d.inst("r1").primary, "n1")
        self.assertEqual(d.incidents("n1")[0].reason, "", "the reason is gone once it acts")

    # -- pause ---------------------------------------------------------------

    def test_pause_by_ctl_survives_restart(self) -> defer.Deferred[None]:
        return self.run_async(self._pause_ctl)

    async def _pause_ctl(self) -> None:
        d = await self.daemon(scenario([shared("r1", "n2")], {}, nodes=4))
        code, out, err = await d.ctl("pause", "--for", "2h", "--reason", "kernel upgrade")
        self.assertEqual(code, 0, err)
        self.assertIn("kernel upgrade", out)
        d.sim.sim.set_diagnose("n2", EVACUATE)
        await d.round()
        self.assertEqual(d.jobs(), [], "paused: no job")
        [inc] = d.incidents("n2")
        self.assertEqual(inc.status, RepairStatus.NOTED, "observed and noted")
        self.assertIn("paused by ganeti-maintd-ctl pause: kernel upgrade", inc.reason)
        ov = await d.overview()
        self.assertEqual(ov["paused"]["source"], "ctl")
        self.assertEqual(ov["paused"]["reason"], "kernel upgrade")
        self.assertLess(abs(ov["paused"]["until"] - reactor.seconds() - 7200), 120)
        notes = d.state.last_round["notes"]
        self.assertIn("paused", [n.get("action") for n in notes])
        # a restart keeps the pause
        await d.stop()
        await d.start()
        await d.round()
        self.assertEqual(d.jobs(), [])
        self.assertEqual((await d.overview())["paused"]["reason"], "kernel upgrade")
        code, out, err = await d.ctl("status", "--json")
        self.assertEqual(json.loads(out), await d.overview(), "ctl status is /1/overview")
        code, out, err = await d.ctl("resume")
        self.assertEqual((code, out), (0, "Paused: no\n"), err)
        await d.round()
        await d.wait_jobs_done()
        self.assertEqual(d.drained(), {"n2"})

    def test_pause_by_tag_blocks_every_job(self) -> defer.Deferred[None]:
        return self.run_async(self._pause_tag)

    async def _pause_tag(self) -> None:
        # unbalanced (balancing would move instances off n2 at once) and n3
        # failing; the cluster carries the tag from the start
        insts = [shared(f"r{k}", "n2", memory=4096) for k in range(6)]
        spec = scenario(insts, {"n3": EVACUATE}, nodes=4)
        spec["tags"] = ["maintd:pause"]
        d = await self.daemon(spec, balance=True)
        for _ in range(2):
            await d.round()
        self.assertEqual(d.jobs(), [], "no incident job, no balancing job")
        self.assertEqual(d.incidents("n3")[0].status, RepairStatus.NOTED, "but noted")
        self.assertEqual((await d.overview())["paused"],
                         {"reason": "cluster tag maintd:pause is set", "until": None,
                          "source": "tag"})
        code, out, _ = await d.ctl("status")
        self.assertIn("(by cluster tag maintd:pause)", out)
        # resume does not lift the tag's pause
        code, out, _ = await d.ctl("resume")
        self.assertIn("cluster tag maintd:pause", out)
        await d.cluster_tag("maintd:pause", False)
        await d.round()
        self.assertIs((await d.overview())["paused"], False)
        ops = [op for _, op in d.ops()]
        self.assertIn(("OP_NODE_SET_PARAMS", "n3"),
                      [(op["OP_ID"], op.get("node_name")) for op in ops],
                      [d.state.incidents, d.state.last_round])
        kinds = {r.kind for op in ops if (r := trail_reason(op.get("reason"))) is not None}
        self.assertIn(BALANCE, kinds, "balancing starts")

    # -- busy rounds ---------------------------------------------------------

    def test_busy_rounds(self) -> defer.Deferred[None]:
        return self.run_async(self._busy)

    async def _busy(self) -> None:
        insts = [drbd("a1", "n2", "n3"), drbd("a2", "n2", "n4"), shared("r1", "n2")]
        # idle interval an hour, busy interval a fifth of a second: the round
        # service alone carries the evacuation through
        d = await self.daemon(scenario(insts, {"n2": EVACUATE}, nodes=5),
                              busy_round_delay=0.2)
        ov = await d.overview()
        self.assertLess(ov["next-round"] - reactor.seconds(), 5, "busy: the next round is soon")
        for _ in range(600):
            incs = d.incidents("n2")
            if incs and incs[0].status == RepairStatus.COMPLETED:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(d.incidents("n2")[0].status, RepairStatus.COMPLETED)
        # idle again: the next round is --round-delay away
        for _ in range(200):
            ov = await d.overview()
            if ov["next-round"] is not None and ov["next-round"] - reactor.seconds() > 3000:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertGreater(ov["next-round"] - reactor.seconds(), 3000)


class PauseHarepTests(TestCase):
    """While paused, harep duties submit nothing either (same mechanism as the
    incidents and balancing: the round's submitting flag); its own suspend tag
    only ever concerns harep."""

    timeout = 120

    def test_paused_harep_submits_nothing(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._harep())

    async def _harep(self) -> None:
        from maintd.daemon.steps.guard import pause_step
        from maintd.daemon.steps.harep import harep_step
        from maintd.daemon.steps.jobs import jobs_step
        from maintd.daemon.steps.snapshot import snapshot_step
        from tests.test_harep_sim import P, SimHarness
        from tests.test_harep_sim import drbd as hdrbd
        from tests.test_harep_sim import scenario as hscenario

        # n3 drained by the admin: harep would migrate "mine" off it
        h = SimHarness(self, hscenario(drained=("n3",), instances=[hdrbd("mine", "n3", "n6")],
                                       cluster_tags=(P + "migrate", "maintd:pause")))
        steps = [pause_step, jobs_step, snapshot_step, pause_step, harep_step]
        for _ in range(2):
            ctx = await h.round(steps=steps)
            await h.settle()
        self.assertEqual(h.sim.sim.jobs.jobs, {}, "no harep job while paused")
        self.assertIn("paused", [n.get("action") for n in ctx.notes])
        self.assertEqual(await h.repair_tags("mine"), [])
        jid = await h.rapi.remove_tags("cluster", None, ["maintd:pause"], reason="operator")
        await h.rapi.wait_jobs([jid], 10)
        await h.round(steps=steps)
        await h.settle()
        self.assertTrue(await h.repair_tags("mine"), "harep acts once the pause is lifted")
