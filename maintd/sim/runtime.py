"""The running simulation: cluster state, job queue, faults and timed events.

One :class:`Simulation` is shared by the RAPI front, the mond fronts and the
control API.  Scenario events (``{"at": seconds, "node": ..., "diagnose":
{...}}`` and friends, see :mod:`maintd.sim.scenario`) run on its clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from maintd.sim.cluster import SimCluster, SimError
from maintd.sim.faults import MOND_MODES, Faults, parse_rapi_fault
from maintd.sim.jobs import JobQueue

log = Logger()


class Simulation:
    def __init__(
        self,
        cluster: SimCluster,
        clock: Any,
        *,
        job_seconds: float = 2.0,
        events: list[dict[str, Any]] | None = None,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self.clock = clock
        self.faults = Faults()
        self.jobs = JobQueue(cluster, clock, job_seconds=job_seconds, wallclock=wallclock)
        self.events = list(events or [])
        self._calls: list[Any] = []
        #: Called with (node name, mode) when a node's mond mode changes.
        self.mond_listeners: list[Callable[[str, str], None]] = []

    def start(self) -> None:
        """Schedule the scenario's timed events on the clock."""
        for event in self.events:
            self._calls.append(self.clock.callLater(float(event.get("at", 0)), self.apply, event))

    def stop(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        self.jobs.stop()

    # -- changes (control API and events) -----------------------------------

    def node(self, name: str) -> Any:
        node = self.cluster.nodes.get(name)
        if node is None:
            raise SimError(f"no node {name!r} in the simulated cluster")
        return node

    def set_diagnose(self, name: str, report: Any) -> None:
        node = self.node(name)
        node.diagnose = report
        log.info("sim: node {node} diagnose report now {report!r}", node=name, report=report)

    def set_mond(self, name: str, mode: Any) -> None:
        self.node(name)
        if mode not in MOND_MODES:
            raise SimError(f"mond mode must be one of {sorted(MOND_MODES)}, not {mode!r}")
        self.faults.mond[name] = mode
        log.info("sim: node {node} mond {mode}", node=name, mode=mode)
        for listener in self.mond_listeners:
            listener(name, mode)

    def set_fail_next(self, count: Any) -> None:
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise SimError(f"fail-next count must be a non-negative integer, not {count!r}")
        self.jobs.fail_next = count

    def set_offline(self, name: str, offline: bool) -> None:
        node = self.node(name)
        if node.master and offline:
            raise SimError(f"node {name} is the master and cannot go offline")
        node.offline = offline
        if offline:
            node.drained = node.master_candidate = False
        self.cluster.changed()
        # A node that dies takes its monitoring daemon with it.
        self.set_mond(name, "down" if offline else "up")

    def set_master(self, name: Any) -> None:
        """Master failover (``gnt-cluster master-failover`` on ``name``).

        The master role moves; the old master stays a master candidate.  RAPI
        keeps answering (it follows the cluster IP on real Ganeti) and the job
        queue is kept, running jobs included.  The new master must be online,
        master capable and not drained.
        """
        if not isinstance(name, str):
            raise SimError(f"master must be a node name, not {name!r}")
        node = self.node(name)
        if node.offline or node.drained or not node.master_capable:
            raise SimError(f"node {name} cannot become the master (offline, drained or not "
                           "master capable)")
        old = self.cluster.nodes.get(self.cluster.master)
        if old is not None and old is not node:
            old.master = False
            old.master_candidate = True
        node.master = node.master_candidate = True
        self.cluster.master = name
        self.cluster.changed()
        log.info("sim: master failover to {node}", node=name)

    def apply(self, event: dict[str, Any]) -> None:
        """Apply one timed scenario event; a bad event is logged, never raised."""
        try:
            self.apply_now(event)
        except (SimError, ValueError) as err:
            log.error("sim: scenario event {event!r} failed: {err}", event=event, err=err)

    def apply_now(self, event: dict[str, Any]) -> None:
        """Apply one event now; raises :class:`SimError`/``ValueError`` when it is bad."""
        log.info("sim: event at {at}s: {event!r}", at=event.get("at", 0), event=event)
        node = event.get("node")
        if "diagnose" in event:
            self.set_diagnose(str(node), event["diagnose"])
        if "mond" in event:
            self.set_mond(str(node), event["mond"])
        if "offline" in event:
            self.set_offline(str(node), bool(event["offline"]))
        if "cpu_load" in event:
            self.node(str(node)).cpu_load = float(event["cpu_load"])
        if "fail_next" in event:
            self.set_fail_next(event["fail_next"])
        if "rapi" in event:
            self.faults.add_rapi(parse_rapi_fault(event["rapi"]))

    def state_json(self) -> dict[str, Any]:
        state = self.cluster.state_json()
        state["faults"] = self.faults.to_json()
        state["jobs"] = {
            "next_id": self.jobs.next_id,
            "fail_next": self.jobs.fail_next,
            "job_seconds": self.jobs.job_seconds,
            "by_status": _count(j.status for j in self.jobs.jobs.values()),
        }
        return state


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
