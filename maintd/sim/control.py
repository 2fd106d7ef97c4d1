"""The simulator's control API under ``/sim/`` on the RAPI port.

``PUT /sim/master`` (body: a node name; master failover, the job queue
kept), ``PUT /sim/nodes/<node>/diagnose`` (body: the self-diagnose object the
node's mond reports from now on), ``PUT /sim/nodes/<node>/mond`` (``"up"``,
``"down"``, ``"garbage"``, ``"hang"``, ``"slow"``), ``PUT /sim/nodes/<node>/
offline`` (true/false: the node dies or comes back, without a Ganeti job),
``PUT /sim/nodes/<node>/cpu-load`` (number), ``PUT /sim/jobs/fail-next``
(count), ``PUT /sim/rapi/fault`` (``{"status": 503, "count": 1}``,
``"garbage"``, ``"hang"`` or ``"clear"``), ``PUT /sim/events`` (a scenario
event, applied now) and ``GET /sim/state``.  Node drain/offline and tags go
through the ordinary RAPI calls, as on real Ganeti.
"""

from __future__ import annotations

import re
from typing import Any

from maintd.sim.cluster import SimError
from maintd.sim.faults import FaultError, parse_rapi_fault
from maintd.sim.runtime import Simulation
from maintd.sim.scenario import event_problem

_NODE = re.compile(r"^/sim/nodes/([\w._-]+)/([\w-]+)$")


class ControlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Control:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def handle(self, method: str, path: str, body: Any) -> Any:
        try:
            return self._handle(method, path.rstrip("/"), body)
        except (SimError, FaultError, ValueError) as err:
            raise ControlError(400, str(err)) from err

    def _handle(self, method: str, path: str, body: Any) -> Any:
        sim = self.sim
        if path == "/sim/state":
            self._method(method, "GET", path)
            return sim.state_json()
        m = _NODE.match(path)
        if m:
            node, what = m.groups()
            if node not in sim.cluster.nodes:
                raise ControlError(404, f"no node {node!r} in the simulated cluster")
            if what == "diagnose":
                if method == "GET":
                    return sim.cluster.nodes[node].diagnose
                self._method(method, "PUT", path)
                sim.set_diagnose(node, body)
                return sim.cluster.nodes[node].diagnose
            if what == "mond":
                if method == "GET":
                    return sim.faults.mond_mode(node)
                self._method(method, "PUT", path)
                sim.set_mond(node, body)
                return body
            if what == "offline":
                self._method(method, "PUT", path)
                if not isinstance(body, bool):
                    raise ControlError(400, "offline body must be true or false")
                sim.set_offline(node, body)
                return body
            if what == "cpu-load":
                self._method(method, "PUT", path)
                if not isinstance(body, int | float) or isinstance(body, bool) or body < 0:
                    raise ControlError(400, "cpu-load body must be a non-negative number")
                sim.cluster.nodes[node].cpu_load = float(body)
                return body
            raise ControlError(404, f"unknown control resource {path}")
        if path == "/sim/master":
            if method == "GET":
                return sim.cluster.master
            self._method(method, "PUT", path)
            sim.set_master(body)
            return sim.cluster.master
        if path == "/sim/jobs/fail-next":
            if method == "GET":
                return sim.jobs.fail_next
            self._method(method, "PUT", path)
            sim.set_fail_next(body)
            return body
        if path == "/sim/rapi/fault":
            if method == "GET":
                return sim.faults.to_json()["rapi"]
            self._method(method, "PUT", path)
            sim.faults.add_rapi(parse_rapi_fault(body))
            return sim.faults.to_json()["rapi"]
        if path == "/sim/mond/delay":
            self._method(method, "PUT", path)
            if not isinstance(body, int | float) or isinstance(body, bool) or body < 0:
                raise ControlError(400, "mond delay must be a non-negative number of seconds")
            sim.faults.mond_delay = float(body)
            return body
        if path == "/sim/events":
            self._method(method, "PUT", path)
            problem = event_problem(body, sim.cluster.nodes)
            if problem:
                raise ControlError(400, problem)
            sim.apply_now(body)
            return None
        raise ControlError(404, f"unknown control resource {path}")

    @staticmethod
    def _method(method: str, allowed: str, path: str) -> None:
        if method != allowed:
            raise ControlError(501, f"Method {method} is unsupported for path {path}")
