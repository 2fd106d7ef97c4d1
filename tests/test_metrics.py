"""Prometheus metrics (maintd.daemon.metrics): what a scrape shows after the
daemon's events, with the steps that report them."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.mond import DiagnoseReport, MondError, MondInvalid, validate_diagnose
from maintd.daemon.config import DaemonConfig
from maintd.daemon.mastership import Mastership
from maintd.daemon.metrics import (
    NO_EVENTS,
    DaemonMetrics,
    MeteredRapi,
    events_of,
    record_reports,
)
from maintd.daemon.round import RoundContext, run_round
from maintd.daemon.state import Action, Incident, MaintState, RepairStatus
from maintd.daemon.store import StateStore
from maintd.decide import guardrails
from tests.test_harep_step import Job


def scrape(metrics: DaemonMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain"), content_type
    out = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def incident(n: int, status: RepairStatus, action: Action = Action.EVACUATE) -> Incident:
    return Incident(
        uuid=f"u{n}", node=f"nu{n}", node_name=f"node{n}", original={"status": action.wire},
        action=action, status=status, jobs=(n,),
    )


class Recorder:
    """A RoundEvents that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((name, *args))

        return record

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == name]


class FakeRapi:
    def __init__(self) -> None:
        self.status: dict[int, str] = {}
        self.next = 10
        self.closed = False

    async def set_node_drained(self, node: str, drained: bool, reason: str | None) -> int:
        self.next += 1
        return self.next

    async def migrate_instance(self, name: str, **kw: Any) -> int:
        self.next += 1
        return self.next

    async def wait_jobs(self, job_ids: list[int], timeout: float) -> dict[int, Job]:
        return {j: Job(j, self.status.get(j, "running")) for j in job_ids}

    async def close(self) -> None:
        self.closed = True


def result_of(d: Any) -> Any:
    out: list[Any] = []
    defer.ensureDeferred(d).addBoth(out.append)
    assert out, "did not finish synchronously"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class ScrapeTimeStateTests(SynchronousTestCase):
    def test_incidents_by_status_and_action_and_the_state_gauges(self) -> None:
        state = MaintState(
            incidents=(
                incident(1, RepairStatus.PENDING),
                incident(2, RepairStatus.PENDING),
                incident(3, RepairStatus.COMPLETED),
                incident(4, RepairStatus.NOTED, Action.LIVE_REPAIR),
                incident(5, RepairStatus.NOTED, Action.EVACUATE_FAILOVER),
            ),
            jobs=(1, 2, 7),
            evacuated=("a", "b"),
            last_round={"number": 12, "end": 1000.5, "result": "ok"},
        )
        current = [state]
        m = DaemonMetrics(lambda: current[0],
                          mastership=Mastership(hostname="h", verified=False))
        s = scrape(m)
        g = "ganeti_maintd_incidents"
        self.assertEqual(sample(s, g, status="pending", action="evacuate"), 2)
        self.assertEqual(sample(s, g, status="completed", action="evacuate"), 1)
        self.assertEqual(sample(s, g, status="noted", action="live-repair"), 1)
        # every combination is there, zero when none (no series appears from nowhere)
        self.assertEqual(sample(s, g, status="failed", action="evacuate-failover"), 0)
        self.assertEqual(len([k for k in s if k[0] == g]), 15)
        self.assertEqual(sample(s, "ganeti_maintd_awaited_jobs"), 3)
        self.assertEqual(sample(s, "ganeti_maintd_evacuated_instances"), 2)
        # under evacuation (guardrails.overview): the pending ones, node1 and node2
        self.assertEqual(sample(s, "ganeti_maintd_nodes_evacuating"), 2)
        self.assertEqual(sample(s, "ganeti_maintd_storm_breaker_tripped"), 0)
        self.assertEqual(sample(s, "ganeti_maintd_paused"), 0)
        self.assertEqual(sample(s, "ganeti_maintd_last_round_number"), 12)
        self.assertEqual(sample(s, "ganeti_maintd_last_round_end_timestamp_seconds"), 1000.5)
        self.assertIsNone(sample(s, "ganeti_maintd_next_round_timestamp_seconds"))
        self.assertEqual(sample(s, "ganeti_maintd_master"), 1)
        self.assertEqual(sample(s, "ganeti_maintd_master_verified"), 0)
        # read at scrape time: a new state shows at the next scrape
        current[0] = MaintState()
        s = scrape(m)
        self.assertEqual(sample(s, g, status="pending", action="evacuate"), 0)
        self.assertEqual(sample(s, "ganeti_maintd_awaited_jobs"), 0)
        self.assertIsNone(sample(s, "ganeti_maintd_last_round_number"))

    def test_budget_breaker_pause_and_next_round_from_the_overview(self) -> None:
        guard = guardrails.paused({"breaker": {"tripped": True, "released": False,
                                               "reporting": 7, "threshold": 5}},
                                  reason="kernel upgrades", duration=600, now=1000.0)
        state = MaintState(incidents=(incident(1, RepairStatus.PENDING),), guard=guard)
        m = DaemonMetrics(lambda: state, overview=lambda: guardrails.overview(
            state, now=1100.0, max_evacuating=3, next_round=1400.0))
        s = scrape(m)
        expected = {
            "nodes_evacuating": 1, "evacuation_budget_nodes": 3, "storm_breaker_tripped": 1,
            "storm_breaker_reporting_nodes": 7, "storm_breaker_threshold_nodes": 5, "paused": 1,
            "pause_until_timestamp_seconds": 1600, "next_round_timestamp_seconds": 1400,
        }
        for name, value in expected.items():
            self.assertEqual(sample(s, "ganeti_maintd_" + name), value, name)

    def test_lost_mastership_shows_zero(self) -> None:
        ms = Mastership(hostname="h", verified=True)
        m = DaemonMetrics(MaintState, mastership=ms)
        ms.set_master(False)
        s = scrape(m)
        self.assertEqual(sample(s, "ganeti_maintd_master"), 0)
        self.assertEqual(sample(s, "ganeti_maintd_master_verified"), 1)

    def test_two_daemons_in_one_process_do_not_collide(self) -> None:
        a, b = DaemonMetrics(MaintState), DaemonMetrics(MaintState)
        a.round_finished("ok", 1.0)
        self.assertEqual(sample(scrape(a), "ganeti_maintd_rounds_total", result="ok"), 1)
        self.assertIsNone(sample(scrape(b), "ganeti_maintd_rounds_total", result="ok"))

    def test_openmetrics_when_asked(self) -> None:
        m = DaemonMetrics(MaintState)
        body, ctype = m.exposition("application/openmetrics-text; version=1.0.0")
        self.assertIn("openmetrics", ctype)
        self.assertTrue(body.endswith(b"# EOF\n"))


class EventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = DaemonMetrics(MaintState)

    def test_rounds_by_result_and_duration_histograms(self) -> None:
        self.m.round_finished("ok", 0.3)
        self.m.round_finished("ok", 4.0)
        self.m.round_finished("failed", 0.1)
        self.m.step_finished("collect", 0.2)
        s = scrape(self.m)
        self.assertEqual(sample(s, "ganeti_maintd_rounds_total", result="ok"), 2)
        self.assertEqual(sample(s, "ganeti_maintd_rounds_total", result="failed"), 1)
        h = "ganeti_maintd_round_duration_seconds"
        self.assertEqual(sample(s, h + "_count"), 3)
        self.assertAlmostEqual(sample(s, h + "_sum") or 0, 4.4)
        self.assertEqual(sample(s, h + "_bucket", le="0.5"), 2)
        self.assertEqual(sample(s, "ganeti_maintd_step_duration_seconds_count", step="collect"), 1)

    def test_reports_by_source_node_and_outcome(self) -> None:
        ok = validate_diagnose("n1", {"data": {"status": "Ok", "command": "", "details": []}})
        with self.assertRaises(MondInvalid) as bad:
            validate_diagnose("n3", {"data": {"status": "on fire"}})

        class BadSignature(Exception):
            outcome = "bad_signature"

        record_reports(self.m, "mond", {"n1": ok, "n2": MondError("n2", "refused"),
                                        "n3": bad.exception})
        record_reports(self.m, "agent", {"n1": BadSignature("forged"), "n2": ok})
        record_reports(self.m, "mond", {"n1": ok})
        s = scrape(self.m)
        r = "ganeti_maintd_reports_total"
        self.assertEqual(sample(s, r, source="mond", node="n1", outcome="ok"), 2)
        self.assertEqual(sample(s, r, source="mond", node="n2", outcome="unreachable"), 1)
        self.assertEqual(sample(s, r, source="mond", node="n3", outcome="invalid"), 1)
        self.assertEqual(sample(s, r, source="agent", node="n1", outcome="bad_signature"), 1)
        self.assertEqual(sample(s, r, source="agent", node="n2", outcome="ok"), 1)

    def test_jobs_submitted_by_kind_and_failures_counted_once(self) -> None:
        fake = FakeRapi()
        rapi = MeteredRapi(fake, self.m)
        drain = result_of(rapi.set_node_drained("n1", True, reason="r"))
        move = result_of(rapi.migrate_instance("i1", target_node="n2", reason="r"))
        self.assertEqual((drain, move), (11, 12))
        fake.status = {11: "success", 12: "error", 99: "lost"}
        # polled twice (jobs step, then harep): still one failure each
        result_of(rapi.wait_jobs([11, 12, 99], 0))
        result_of(rapi.wait_jobs([12, 99], 0))
        s = scrape(self.m)
        self.assertEqual(sample(s, "ganeti_maintd_jobs_submitted_total", kind="set-drained"), 1)
        self.assertEqual(sample(s, "ganeti_maintd_jobs_submitted_total", kind="migrate"), 1)
        f = "ganeti_maintd_jobs_failed_total"
        self.assertEqual(sample(s, f, kind="migrate", status="error"), 1)
        # a job from before a restart: kind unknown
        self.assertEqual(sample(s, f, kind="unknown", status="lost"), 1)
        self.assertIsNone(sample(s, f, kind="set-drained", status="success"))
        # everything else is the client's own
        result_of(rapi.close())
        self.assertTrue(fake.closed)
        self.assertIs(rapi.status, fake.status)

    def test_harep_and_balance_and_store(self) -> None:
        self.m.harep_repair("failover", "started")
        self.m.harep_repair("failover", "success")
        self.m.balance_score("rack-a", 3.5, 1.25)
        self.m.store_write(0.004)
        s = scrape(self.m)
        self.assertEqual(sample(s, "ganeti_maintd_harep_repairs_total", type="failover",
                                result="success"), 1)
        self.assertEqual(sample(s, "ganeti_maintd_balance_score", group="rack-a", phase="before"),
                         3.5)
        self.assertEqual(sample(s, "ganeti_maintd_balance_score", group="rack-a", phase="after"),
                         1.25)
        self.assertEqual(sample(s, "ganeti_maintd_store_write_duration_seconds_bucket",
                                le="0.005"), 1)

    def test_events_of_defaults_to_nothing(self) -> None:
        self.assertIs(events_of(object()), NO_EVENTS)
        NO_EVENTS.round_finished("ok", 1.0)  # accepted, does nothing
        self.assertIs(RoundContext(number=1, now=0.0, config=None, reactor=None,  # type: ignore[arg-type]
                                   state=MaintState()).events, NO_EVENTS)


class InstrumentationTests(SynchronousTestCase):
    """The daemon's code reports its events."""

    def context(self, events: Any) -> RoundContext:
        config = DaemonConfig.for_tests(state_dir=tempfile.mkdtemp())
        return RoundContext(number=3, now=0.0, config=config, reactor=None, state=MaintState(),
                            events=events)

    def test_run_round_reports_steps_and_result(self) -> None:
        rec = Recorder()

        async def jobs_step(ctx: Any) -> None:
            pass

        async def snapshot_step(ctx: Any) -> None:
            ctx.cluster = "the cluster"
            raise RuntimeError("RAPI down")

        async def never_step(ctx: Any) -> None:
            raise AssertionError("not reached")

        ctx = self.context(rec)
        with self.assertRaises(RuntimeError):
            result_of(run_round(ctx, [jobs_step, snapshot_step, never_step]))
        self.assertEqual([s[0] for s in rec.named("step_finished")], ["jobs", "snapshot"])
        ((result, seconds),) = rec.named("round_finished")
        self.assertEqual(result, "failed")
        self.assertGreaterEqual(seconds, 0)
        self.assertEqual(rec.named("cluster_seen"), [("the cluster",)])

    def test_store_writes_are_timed(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(os.path.join(d, f)) for f in os.listdir(d)])
        store = StateStore.open(d)
        self.addCleanup(store.close)
        seen: list[float] = []
        store.write_observers.append(seen.append)
        store.commit(MaintState(jobs=(1,)))
        store.commit(MaintState(jobs=(1,)))  # no change: no write
        self.assertEqual(len(seen), 1)
        self.assertGreater(seen[0], 0)

    def test_collect_step_counts_report_outcomes(self) -> None:
        from maintd.cluster.model import Cluster, Node
        from maintd.daemon.steps.collect import collect_step

        nodes = {n: Node(name=n, uuid=f"{n}-u", pip="127.0.0.9", group="g") for n in ("a", "b")}

        class Mond:
            async def diagnose(self, node: Any) -> DiagnoseReport:
                raise AssertionError

            async def gather(self, nodes: Any, fn: Any) -> dict[str, Any]:
                ok = validate_diagnose("a", {"data": {"status": "Ok"}})
                return {"a": ok, "b": MondInvalid("b", "malformed JSON")}

        rec = Recorder()
        ctx = self.context(rec)
        ctx.cluster = Cluster(name="c", master="a", nodes=nodes)
        ctx.mond = Mond()
        result_of(collect_step(ctx))
        self.assertEqual(sorted(rec.named("report")),
                         [("mond", "a", "ok"), ("mond", "b", "invalid")])

    def test_collect_step_counts_agent_outcomes_as_agent(self) -> None:
        from maintd.cluster.agent import AgentError
        from maintd.cluster.model import Cluster, Node
        from maintd.daemon.steps.collect import collect_step

        nodes = {n: Node(name=n, uuid=f"{n}-u", pip="127.0.0.9", group="g")
                 for n in ("a", "b", "c", "d")}

        class Agent:
            async def diagnose(self, node: Any) -> DiagnoseReport:
                raise AssertionError

            async def gather(self, nodes: Any, fn: Any) -> dict[str, Any]:
                return {
                    "a": validate_diagnose("a", {"data": {"status": "Ok"}}),
                    "b": AgentError("b", "report refused: bad hmac", "bad_signature"),
                    "c": AgentError("c", "diagnose collector failed: x", "collector_failed"),
                    "d": AgentError("d", "cannot reach https://127.0.0.9:1817"),
                }

        rec = Recorder()
        ctx = self.context(rec)
        ctx.cluster = Cluster(name="c", master="a", nodes=nodes)
        ctx.agent = Agent()
        result_of(collect_step(ctx))
        self.assertEqual(sorted(rec.named("report")), [
            ("agent", "a", "ok"), ("agent", "b", "bad_signature"),
            ("agent", "c", "collector_failed"), ("agent", "d", "unreachable")])

    def test_invalid_answers_of_a_client_subclass_keep_its_error_class(self) -> None:
        from maintd.cluster.agent import AgentError
        from maintd.cluster.model import Node
        from maintd.cluster.mond import MondClient

        class Client(MondClient):
            Error = AgentError

        node = Node(name="n1", uuid="u", group="g", pip="127.0.0.9")
        for client, kind in ((MondClient(None), MondInvalid), (Client(None), AgentError)):
            with self.assertRaises(MondError) as raised:
                client._decode(node, "http://127.0.0.9/x", 200, b"{nope")
            self.assertIsInstance(raised.exception, kind)
            self.assertEqual(raised.exception.outcome, "invalid")

    def test_harep_step_reports_repairs(self) -> None:
        from tests.harep_fixtures import P, drbd, make_cluster
        from tests.test_harep_step import Ctx, World

        rec = Recorder()
        Ctx.events = rec  # type: ignore[attr-defined]
        self.addCleanup(delattr, Ctx, "events")
        w = World(make_cluster(offline=["n2"], cluster_tags=[P + "failover"], instances=[drbd()]))
        w.round()
        self.assertEqual(rec.named("harep_repair"), [("failover", "started")])
        w.rapi.status[101] = "success"  # the failover job
        w.move("inst1", primary="n3", secondaries=("n2",))
        w.round()
        self.assertEqual(rec.named("harep_repair"), [("failover", "started"),
                                                     ("failover", "success")])

    def test_balance_step_reports_scores(self) -> None:
        from tests.test_balance_step import generate_cluster, make_ctx, run

        ctx = make_ctx(generate_cluster(10, 60, seed=21), balance=True)
        rec = Recorder()
        ctx.events = rec
        run(ctx)
        scored = [n for n in ctx.notes if "initial_score" in n]
        self.assertTrue(scored)
        self.assertEqual(
            rec.named("balance_score"),
            [(n["group"], n["initial_score"], n["score_after_jobset"]) for n in scored],
        )
        self.assertTrue(all(after <= before for _, before, after in rec.named("balance_score")))
