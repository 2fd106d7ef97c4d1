"""Prometheus metrics of the daemon (``GET /metrics``), with ``prometheus-client``.

Two sources:

* **Events** the daemon's code reports as they happen, through the small
  :class:`RoundEvents` interface: a round ended (result, duration), a step
  ended (duration), a job was submitted or seen failed (by kind), a node's
  report came in (per source, node and outcome), a harep repair started or
  ended, the balancer scored a group, the state store wrote.  Code that has
  no metrics (tests, tools) uses :data:`NO_EVENTS`, which does nothing;
  :func:`events_of` finds the events of a round context, or that default.
* **The current state**, read at scrape time by a custom collector: the
  incidents by status and action, awaited jobs, evacuated instances,
  mastership, the last round, and from the guardrails overview (the
  ``/1/overview`` object) the nodes under evacuation and the budget, the
  storm breaker, the pause and the next round.  Those are never
  stale and cost nothing between scrapes.

Node reports: a collector records each node's result with
``record_reports(events_of(ctx), source, results)`` (``source`` ``mond`` or
``agent``; ``results`` maps node name to a report or an exception).  An
exception says its outcome in an ``outcome`` attribute (``unreachable``,
``invalid``, ``bad_signature``, ``collector_failed``;
:class:`maintd.cluster.mond.MondInvalid` is ``invalid``); without one it
counts as ``unreachable``.

Each daemon has its own :class:`~prometheus_client.CollectorRegistry`
(never the process-global one), so several daemons in one test process do
not collide.

Job submissions are counted by :class:`MeteredRapi`, a thin wrapper around
the RAPI client of each round's context (``RoundContext.rapi``): every job-submitting method counts its
kind, every final failed job that ``wait_jobs`` returns counts once.  The
steps need no change for it.

Names follow the Prometheus conventions: prefix ``ganeti_maintd_``, base
units (seconds), ``_total`` for counters (added by the library).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.logger import Logger

from maintd import __version__
from maintd.daemon.state import Action, MaintState, RepairStatus
from maintd.decide import guardrails

log = Logger()

PREFIX = "ganeti_maintd_"

#: Outcomes of one node's report (self-diagnose from mond, or the agent's).
REPORT_OK = "ok"
REPORT_UNREACHABLE = "unreachable"
REPORT_INVALID = "invalid"
REPORT_BAD_SIGNATURE = "bad_signature"
#: The node agent says its diagnose collector failed (maintd.cluster.agent).
REPORT_COLLECTOR_FAILED = "collector_failed"
REPORT_OUTCOMES = (REPORT_OK, REPORT_UNREACHABLE, REPORT_INVALID, REPORT_BAD_SIGNATURE,
                   REPORT_COLLECTOR_FAILED)

#: RAPI client methods that submit a Ganeti job, and the ``kind`` label they count as.
JOB_KINDS: Mapping[str, str] = {
    "add_tags": "add-tags",
    "remove_tags": "remove-tags",
    "set_node_drained": "set-drained",
    "evacuate_node": "evacuate-node",
    "migrate_instance": "migrate",
    "failover_instance": "failover",
    "replace_disks": "replace-disks",
    "recreate_disks": "recreate-disks",
    "reinstall_instance": "reinstall",
    "startup_instance": "startup",
    "shutdown_instance": "shutdown",
}
UNKNOWN_KIND = "unknown"

ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

#: Job ids remembered (kind of a submitted job, failures already counted).
_JOB_MEMORY = 10_000


class RoundEvents(Protocol):
    """What the daemon's code reports; every method returns at once."""

    def round_finished(self, result: str, seconds: float) -> None: ...

    def step_finished(self, step: str, seconds: float) -> None: ...

    def job_submitted(self, job_id: int, kind: str) -> None: ...

    def job_failed(self, job_id: int, status: str) -> None: ...

    def report(self, source: str, node: str, outcome: str) -> None: ...

    def harep_repair(self, repair_type: str, result: str) -> None: ...

    def balance_score(self, group: str, before: float, after: float) -> None: ...

    def store_write(self, seconds: float) -> None: ...

    def cluster_seen(self, cluster: Any) -> None: ...


class NullEvents:
    """The default :class:`RoundEvents`: records nothing."""

    def round_finished(self, result: str, seconds: float) -> None:
        pass

    def step_finished(self, step: str, seconds: float) -> None:
        pass

    def job_submitted(self, job_id: int, kind: str) -> None:
        pass

    def job_failed(self, job_id: int, status: str) -> None:
        pass

    def report(self, source: str, node: str, outcome: str) -> None:
        pass

    def harep_repair(self, repair_type: str, result: str) -> None:
        pass

    def balance_score(self, group: str, before: float, after: float) -> None:
        pass

    def store_write(self, seconds: float) -> None:
        pass

    def cluster_seen(self, cluster: Any) -> None:
        pass


NO_EVENTS: RoundEvents = NullEvents()


def events_of(ctx: Any) -> RoundEvents:
    """The events of a round context (any object), else :data:`NO_EVENTS`."""
    events = getattr(ctx, "events", None)
    return events if events is not None else NO_EVENTS


def report_outcome(result: Any) -> str:
    """The outcome label of one node's report result: a report is ``ok``; an
    error says its own (``outcome`` attribute), else ``unreachable``."""
    if not isinstance(result, BaseException):
        return REPORT_OK
    outcome = getattr(result, "outcome", REPORT_UNREACHABLE)
    return outcome if outcome in REPORT_OUTCOMES else REPORT_UNREACHABLE


def record_reports(events: RoundEvents, source: str, results: Mapping[str, Any]) -> None:
    """Count every node's report outcome (``results``: node name -> report or error)."""
    for node, result in results.items():
        events.report(source, node, report_outcome(result))


def step_label(step: Any) -> str:
    """``jobs`` for ``jobs_step``: the step's name as a label value."""
    name = str(getattr(step, "__name__", None) or type(step).__name__)
    return name[: -len("_step")] if name.endswith("_step") else name


# --- the state, read at scrape time ----------------------------------------------


class _StateCollector:
    """Gauges computed from the daemon's current state on every scrape."""

    def __init__(self, source: DaemonMetrics) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # names are checked at collect time; nothing fixed to describe

    def collect(self) -> Iterable[Metric]:
        src = self.source
        state = src.state()
        incidents = GaugeMetricFamily(
            PREFIX + "incidents",
            "Incidents held, by repair-status and action",
            labels=["status", "action"],
        )
        counts: collections.Counter[tuple[str, str]] = collections.Counter(
            (i.status.wire, i.action.wire) for i in state.incidents
        )
        for status in RepairStatus:
            for action in Action:
                if action is not Action.OK:
                    incidents.add_metric([status.wire, action.wire], counts[status.wire, action.wire])
        yield incidents
        yield _gauge("awaited_jobs", "Ganeti jobs the daemon waits for", len(state.jobs))
        yield _gauge(
            "evacuated_instances", "Instances recently evacuated (/1/evacuated)", len(state.evacuated)
        )
        yield _gauge(
            "harep_repairs_in_progress", "harep repairs started and not finished", len(state.harep)
        )
        try:
            overview = src.overview()
        except Exception as e:  # the other metrics are still worth a scrape
            log.error("metrics: no guardrails overview: {error}", error=f"{type(e).__name__}: {e}")
            overview = {}
        yield from _guardrails(overview)
        info = GaugeMetricFamily(PREFIX + "build_info", "The daemon's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        last = state.last_round or {}
        if isinstance(last.get("end"), int | float):
            yield _gauge(
                "last_round_end_timestamp_seconds", "When the last round ended", last["end"]
            )
        if isinstance(last.get("number"), int):
            yield _gauge("last_round_number", "Number of the last round", last["number"])
        mastership = src.mastership
        if mastership is not None:
            yield _gauge(
                "master",
                "1 while this daemon may submit jobs (it is the master)",
                1 if mastership.is_master else 0,
            )
            yield _gauge(
                "master_verified",
                "1 when mastership was voted on, 0 with --no-voting/--simulate",
                1 if mastership.verified else 0,
            )
        yield from src.extra_metrics()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _guardrails(ov: Mapping[str, Any]) -> Iterable[Metric]:
    """The guardrails of :func:`maintd.decide.guardrails.overview` as gauges."""
    evacuating = _number(ov.get("evacuating"))
    if evacuating is not None:
        yield _gauge("nodes_evacuating", "Nodes under evacuation by the daemon", evacuating)
    budget = _number(ov.get("max-evacuating"))
    if budget is not None:
        yield _gauge("evacuation_budget_nodes",
                     "Nodes that may be under evacuation at once (--max-evacuating)", budget)
    breaker = ov.get("storm-breaker")
    if isinstance(breaker, Mapping):
        yield _gauge("storm_breaker_tripped",
                     "1 while the storm breaker holds new evacuations and repairs",
                     1 if breaker.get("tripped") is True else 0)
        for key, name, doc in (
            ("reporting", "storm_breaker_reporting_nodes",
             "Nodes that reported a problem in the last round"),
            ("threshold", "storm_breaker_threshold_nodes",
             "Reporting nodes above which the storm breaker trips"),
        ):
            value = _number(breaker.get(key))
            if value is not None:
                yield _gauge(name, doc, value)
    pause = ov.get("paused")
    if "paused" in ov:
        yield _gauge("paused", "1 while the daemon is paused (ctl pause or the maintd:pause tag)",
                     1 if isinstance(pause, Mapping) else 0)
    until = _number(pause.get("until")) if isinstance(pause, Mapping) else None
    if until is not None:
        yield _gauge("pause_until_timestamp_seconds", "When the pause ends by itself", until)
    next_round = _number(ov.get("next-round"))
    if next_round is not None:
        yield _gauge("next_round_timestamp_seconds", "When the next round is due", next_round)


class DaemonMetrics(NullEvents):
    """The daemon's metrics: a :class:`RoundEvents` plus its own registry.

    ``state``: the current state (the store's).  ``overview``: the
    guardrails overview now (budget, storm breaker, pause, next round; the
    daemon passes its ``/1/overview`` builder), by default
    :func:`maintd.decide.guardrails.overview` of the state.  ``mastership``:
    a :class:`~maintd.daemon.mastership.Mastership` or None.
    """

    def __init__(
        self,
        state: Callable[[], MaintState],
        *,
        overview: Callable[[], Mapping[str, Any]] | None = None,
        mastership: Any = None,
    ) -> None:
        self.state = state
        self.overview = overview or (lambda: guardrails.overview(state(), now=time.time()))
        self.mastership = mastership
        #: The cluster as the last round's snapshot saw it (None before).
        self.cluster: Any = None
        #: More scrape-time metrics (callables yielding metric families).
        self.extra: list[Callable[[], Iterable[Metric]]] = []
        # No ``*_created`` series: they double the output and nothing here needs them.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds = Counter(
            PREFIX + "rounds", "Rounds ended, by result (ok, failed, stopped)", ["result"], registry=r
        )
        self.round_seconds = Histogram(
            PREFIX + "round_duration_seconds", "Duration of rounds", buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            PREFIX + "step_duration_seconds", "Duration of round steps", ["step"],
            buckets=ROUND_BUCKETS, registry=r,
        )
        self.jobs_submitted = Counter(
            PREFIX + "jobs_submitted", "Ganeti jobs submitted, by kind", ["kind"], registry=r
        )
        self.jobs_failed = Counter(
            PREFIX + "jobs_failed",
            "Ganeti jobs seen ending without success, by kind and final status",
            ["kind", "status"],
            registry=r,
        )
        self.reports = Counter(
            PREFIX + "reports",
            "Node reports received, by source (mond, agent), node and outcome "
            "(ok, unreachable, invalid, bad_signature, collector_failed)",
            ["source", "node", "outcome"],
            registry=r,
        )
        self.harep = Counter(
            PREFIX + "harep_repairs",
            "harep repairs by type and result (started, success, failure, enoperm)",
            ["type", "result"],
            registry=r,
        )
        self.balance = Gauge(
            PREFIX + "balance_score",
            "Cluster score of a node group before and after the balancer's last jobset",
            ["group", "phase"],
            registry=r,
        )
        self.store_seconds = Histogram(
            PREFIX + "store_write_duration_seconds",
            "Duration of durable state writes (write, fsync, rename, directory fsync)",
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self._kinds: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._failed: collections.OrderedDict[int, None] = collections.OrderedDict()
        r.register(_StateCollector(self))

    # --- scrape ------------------------------------------------------------------

    def extra_metrics(self) -> Iterable[Metric]:
        for source in list(self.extra):
            yield from source()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics in the format ``accept`` asks for (text format by
        default, OpenMetrics when asked): (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # --- events ------------------------------------------------------------------

    def round_finished(self, result: str, seconds: float) -> None:
        self.rounds.labels(result).inc()
        self.round_seconds.observe(max(0.0, seconds))

    def step_finished(self, step: str, seconds: float) -> None:
        self.step_seconds.labels(step).observe(max(0.0, seconds))

    def job_submitted(self, job_id: int, kind: str) -> None:
        self.jobs_submitted.labels(kind).inc()
        _remember(self._kinds, int(job_id), kind)

    def job_failed(self, job_id: int, status: str) -> None:
        job_id = int(job_id)
        if job_id in self._failed:
            return  # seen before (polled again by another step)
        _remember(self._failed, job_id, None)
        self.jobs_failed.labels(self._kinds.get(job_id, UNKNOWN_KIND), status).inc()

    def report(self, source: str, node: str, outcome: str) -> None:
        self.reports.labels(source, node, outcome).inc()

    def harep_repair(self, repair_type: str, result: str) -> None:
        self.harep.labels(repair_type, result).inc()

    def balance_score(self, group: str, before: float, after: float) -> None:
        self.balance.labels(group, "before").set(before)
        self.balance.labels(group, "after").set(after)

    def store_write(self, seconds: float) -> None:
        self.store_seconds.observe(max(0.0, seconds))

    def cluster_seen(self, cluster: Any) -> None:
        self.cluster = cluster


def _remember(memory: collections.OrderedDict[int, Any], key: int, value: Any) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > _JOB_MEMORY:
        memory.popitem(last=False)


def metered(client: Any, events: RoundEvents) -> Any:
    """``client`` counted into ``events`` (:class:`MeteredRapi`); as it is
    without a client or without metrics."""
    if client is None or events is NO_EVENTS:
        return client
    return MeteredRapi(client, events)


class MeteredRapi:
    """A RAPI client whose job submissions and job failures are counted.

    Everything else is the wrapped client's own attribute.
    """

    def __init__(self, client: Any, events: RoundEvents) -> None:
        self._client = client
        self._events = events

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        kind = JOB_KINDS.get(name)
        if kind is None or not callable(attr):
            return attr

        async def submit(*args: Any, **kwargs: Any) -> Any:
            job = await attr(*args, **kwargs)
            self._events.job_submitted(int(job), kind)
            return job

        return submit

    async def wait_jobs(self, job_ids: Iterable[int], timeout: float, **kwargs: Any) -> Any:
        results = await self._client.wait_jobs(job_ids, timeout, **kwargs)
        for job_id, result in results.items():
            if getattr(result, "final", False) and not getattr(result, "ok", True):
                self._events.job_failed(job_id, str(result.status))
        return results

