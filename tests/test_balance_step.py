"""The balance round step and live load (fake RAPI and mond, plain values)."""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.model import Cluster
from maintd.cluster.mond import MondError
from maintd.cluster.rapi.errors import RapiServerError
from maintd.daemon.config import DaemonConfig
from maintd.daemon.round import RoundContext
from maintd.daemon.state import MaintState
from maintd.daemon.steps.balance import balance_step, settings
from maintd.decide.balance.gen import generate_cluster
from maintd.decide.balance.load import LoadError, NodeReports, compute_load
from maintd.decide.balance.planner import Options, plan


class FakeRapi:
    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.next_id = 100
        self.fail_after = fail_after

    async def _job(self, op: str, name: str, kw: dict[str, Any]) -> int:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RapiServerError("boom")
        self.calls.append((op, name, kw))
        self.next_id += 1
        return self.next_id

    async def migrate_instance(self, name: str, **kw: Any) -> int:
        return await self._job("migrate", name, kw)

    async def failover_instance(self, name: str, **kw: Any) -> int:
        return await self._job("failover", name, kw)

    async def replace_disks(self, name: str, **kw: Any) -> int:
        return await self._job("replace", name, kw)


class FakeMond:
    def __init__(self, reports: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.reports = reports
        self.asked: list[tuple[str, str]] = []

    async def report(self, node: Any, category: str, name: str) -> dict[str, Any]:
        self.asked.append((node.name, name))
        try:
            return self.reports[(node.name, name)]
        except KeyError:
            raise MondError(node.name, f"no {name} report") from None

    async def gather(
        self, nodes: Iterable[Any], fn: Callable[[Any], Awaitable[Any]]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in nodes:
            try:
                out[n.name] = await fn(n)
            except MondError as e:
                out[n.name] = e
        return out


def cpu_report(load: float) -> dict[str, Any]:
    return {"name": "cpu-avg-load", "data": {"cpu_number": 4, "cpus": [], "cpu_total": load}}


def make_ctx(
    cluster: Cluster, free: set[str] | None = None, mond: Any = None, rapi: Any = None, **cfg: Any
) -> RoundContext:
    tmp = tempfile.mkdtemp()
    config = DaemonConfig.for_tests(state_dir=tmp, **cfg)
    return RoundContext(
        number=1,
        now=0.0,
        config=config,
        reactor=Clock(),
        state=MaintState(),
        rapi=rapi if rapi is not None else FakeRapi(),
        mond=mond,
        cluster=cluster,
        free_nodes=set(cluster.nodes) if free is None else free,
    )


def run(ctx: RoundContext) -> None:
    d = defer.ensureDeferred(balance_step(ctx))
    failures: list[Any] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()


class StepTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = generate_cluster(10, 60, seed=21)

    def test_disabled_by_default(self) -> None:
        ctx = make_ctx(self.cluster)
        run(ctx)
        self.assertEqual(ctx.rapi.calls, [])
        self.assertEqual(ctx.notes, [])

    def test_settings_from_cluster_and_config(self) -> None:
        cfg = DaemonConfig.for_tests(state_dir="/tmp/x")
        self.assertEqual(settings(cfg, self.cluster), (False, 0.1))
        c = attrs.evolve(self.cluster, maint_balance=True, maint_balance_threshold=0.5)
        self.assertEqual(settings(cfg, c), (True, 0.5))
        cfg2 = DaemonConfig.for_tests(state_dir="/tmp/x", balance=False, balance_threshold=0.2)
        self.assertEqual(settings(cfg2, c), (False, 0.2))

    def test_submits_only_the_first_jobset(self) -> None:
        ctx = make_ctx(self.cluster, balance=True)
        run(ctx)
        full = plan(self.cluster, Options(min_gain=0.1, min_gain_limit=1.0))
        # the round runs the moves up to the first one touching a node already used
        first, used = [], set()
        for mv in full.moves:
            if used & set(mv.nodes):
                break
            first.append(mv)
            used.update(mv.nodes)
        self.assertLess(len(first), len(full.moves))
        moved = [n for n in ctx.notes if "instance" in n]
        self.assertEqual([n["instance"] for n in moved], [m.instance for m in first])
        self.assertTrue(ctx.rapi.calls)
        self.assertEqual({c[1] for c in ctx.rapi.calls}, {m.instance for m in first})
        # every job id is in the durable state
        self.assertEqual(set(ctx.state.jobs), {j for n in moved for j in n["jobs"]})
        for _op, _name, kw in ctx.rapi.calls:
            self.assertEqual(kw["reason"], f"maintd:1:balance:{_name}:-")

    def test_only_free_nodes_touched(self) -> None:
        names = sorted(self.cluster.nodes)
        busy = set(names[:4])  # nodes with incidents/repairs this round
        ctx = make_ctx(self.cluster, free=set(names) - busy, balance=True)
        run(ctx)
        for n in ctx.notes:
            if "instance" in n:
                inst = self.cluster.instances[n["instance"]]
                self.assertFalse({inst.primary, *inst.secondaries} & busy, n)
                self.assertNotIn(n["to"], busy)
        for op, _name, kw in ctx.rapi.calls:
            if op == "replace":
                self.assertNotIn(kw["remote_node"], busy)

    def test_threshold_stops_balancing(self) -> None:
        ctx = make_ctx(self.cluster, balance=True, balance_threshold=1000.0)
        run(ctx)
        self.assertEqual(ctx.rapi.calls, [])
        summary = [n for n in ctx.notes if "moves" in n]
        self.assertEqual(summary[0]["moves"], 0)

    def test_dry_run_only_notes(self) -> None:
        ctx = make_ctx(self.cluster, balance=True, dry_run=True)
        run(ctx)
        self.assertEqual(ctx.rapi.calls, [])
        moved = [n for n in ctx.notes if "instance" in n]
        self.assertTrue(moved)
        self.assertTrue(all(n["dry_run"] for n in moved))
        self.assertEqual(ctx.state.jobs, ())

    def test_no_jobs_without_mastership(self) -> None:
        ctx = make_ctx(self.cluster, balance=True)
        ctx.submitting = False
        run(ctx)
        self.assertEqual(ctx.rapi.calls, [])
        self.assertTrue([n for n in ctx.notes if "instance" in n])

    def test_rapi_error_is_noted_not_raised(self) -> None:
        ctx = make_ctx(self.cluster, rapi=FakeRapi(fail_after=0), balance=True)
        run(ctx)
        errors = [n for n in ctx.notes if "error" in n]
        self.assertEqual(len(errors), 1)
        self.assertIn("boom", errors[0]["error"])

    def test_missing_load_skips_round(self) -> None:
        mond = FakeMond({})  # no node answers
        ctx = make_ctx(self.cluster, mond=mond, balance=True)
        run(ctx)
        self.assertEqual(ctx.rapi.calls, [])
        self.assertEqual(ctx.notes[0]["result"], "skipped")
        self.assertIn("no CPU data", ctx.notes[0]["reason"])

    def test_live_cpu_load_drives_moves(self) -> None:
        reports = {(n, "cpu-avg-load"): cpu_report(0.5) for n in self.cluster.nodes}
        hot = sorted(self.cluster.nodes)[2]
        reports[(hot, "cpu-avg-load")] = cpu_report(40.0)
        ctx = make_ctx(self.cluster, mond=FakeMond(reports), balance=True)
        run(ctx)
        moved = [n for n in ctx.notes if "instance" in n]
        self.assertTrue(any(n["from"] == hot for n in moved), moved)


class LoadTests(SynchronousTestCase):
    def setUp(self) -> None:
        c = generate_cluster(4, 12, seed=3)
        insts = dict(c.instances)
        names = sorted(insts)
        self.xen = names[0]
        insts[self.xen] = attrs.evolve(insts[self.xen], hypervisor="xen-pvm")
        self.cluster = attrs.evolve(c, instances=insts)

    def reports(self, **over: Any) -> dict[str, NodeReports]:
        out = {n: NodeReports(cpu=cpu_report(2.0), xen={"data": {}}) for n in self.cluster.nodes}
        out.update(over)
        return out

    def test_cpu_shared_by_vcpus(self) -> None:
        xen_node = self.cluster.instances[self.xen].primary
        reps = self.reports(
            **{xen_node: NodeReports(cpu=cpu_report(2.0), xen={"data": {self.xen: 0.7}})}
        )
        load = compute_load(self.cluster, reps)
        self.assertEqual(load.util[self.xen].cpu, 0.7)
        node = sorted(self.cluster.nodes)[0]
        n = self.cluster.nodes[node]
        used = n.cnos + sum(self.cluster.instances[i].vcpus for i in n.primaries)
        for i in n.primaries:
            if i != self.xen:
                self.assertAlmostEqual(
                    load.util[i].cpu, 2.0 * self.cluster.instances[i].vcpus / used
                )
                self.assertEqual(load.util[i].mem, 0.0)

    def test_missing_xen_data_is_an_error_unless_evacuated(self) -> None:
        with self.assertRaises(LoadError) as cm:
            compute_load(self.cluster, self.reports())
        self.assertIn(self.xen, str(cm.exception))
        load = compute_load(self.cluster, self.reports(), evacuated=[self.xen])
        self.assertEqual(load.util[self.xen].cpu, 0.0)
        self.assertEqual(load.evacuated, (self.xen,))

    def test_evacuated_leaves_when_data_returns(self) -> None:
        xen_node = self.cluster.instances[self.xen].primary
        reps = self.reports(
            **{xen_node: NodeReports(cpu=cpu_report(1.0), xen={"data": {self.xen: 0.3}})}
        )
        load = compute_load(self.cluster, reps, evacuated=[self.xen, "gone-instance"])
        self.assertEqual(load.evacuated, ())

    def test_malformed_report(self) -> None:
        node = sorted(self.cluster.nodes)[1]
        with self.assertRaises(LoadError) as cm:
            compute_load(
                self.cluster, self.reports(**{node: NodeReports(cpu={"data": {"cpu_total": "x"}})})
            )
        self.assertIn(node, str(cm.exception))

    def test_rss_used_when_memory_overcommitted(self) -> None:
        c = attrs.evolve(self.cluster, ipolicy={**self.cluster.ipolicy, "memory-ratio": 1.5})
        rss = {i: 1000.0 for i in c.instances}
        reps = {
            n: NodeReports(cpu=cpu_report(1.0), xen={"data": {self.xen: 0.1}}, rss={"data": rss})
            for n in c.nodes
        }
        load = compute_load(c, reps)
        self.assertAlmostEqual(load.util[self.xen].mem, 2.5 * 1000.0)
        assert load.mem_pool is not None
        n = sorted(c.nodes)[0]
        self.assertEqual(load.mem_pool[n], (c.nodes[n].mtotal - c.nodes[n].mnode) * 256.0)
        reps[n] = NodeReports(cpu=cpu_report(1.0), xen={"data": {self.xen: 0.1}}, rss={"data": {}})
        del rss[sorted(rss)[3]]
        with self.assertRaises(LoadError):
            compute_load(c, {k: attrs.evolve(v, rss={"data": rss}) for k, v in reps.items()})
