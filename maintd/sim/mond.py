"""Per-node monitoring daemon (mond) fronts of the simulated cluster.

Each node gets its own HTTP server on its primary IP (127.a.b.c) and the
configured port, answering like Ganeti's mond: ``/1/list/collectors``,
``/1/report/all`` and ``/1/report/<category>/<name>`` for
``default/cpu-avg-load``, ``default/xen-cpu-avg-load``,
``default/kvm-inst-rss`` and ``node/diagnose`` (2.17's self-diagnose
collector).  An unknown report is a 404 with a plain-text body.

Faults per node (:class:`maintd.sim.faults.Faults`): ``down`` stops
listening (connection refused), ``hang`` accepts and never answers,
``garbage`` answers malformed JSON, ``slow`` answers after
``faults.mond_delay`` seconds of the simulator's clock.  Changing a node's
mode drops the connections of requests still held by ``hang`` or ``slow``.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task, tcp
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from maintd.sim.cluster import SimCluster, SimNode
from maintd.sim.runtime import Simulation

log = Logger()

#: Start of the log prefix of every node's mond site ("sim mond of NODE at ADDRESS").
SITE_PREFIX = "sim mond of "

#: (name, URL category, kind): kind 0 = performance, 1 = status.
COLLECTORS = [
    ("cpu-avg-load", "default", 0),
    ("xen-cpu-avg-load", "default", 0),
    ("kvm-inst-rss", "default", 0),
    ("diagnose", "node", 1),
]
NOT_FOUND = b"Unable to produce a report for the requested resource"
PAGE_KIB = 4


def _report(name: str, category: str, kind: int, data: Any, now: float) -> dict[str, Any]:
    return {
        "name": name,
        "version": "B",
        "format_version": 1,
        "timestamp": int(now * 1e9),
        "category": None if category == "default" else category,
        "kind": kind,
        "data": data,
    }


def _running_primaries(cluster: SimCluster, node: SimNode) -> list[Any]:
    insts = (cluster.instances[n] for n in cluster.primaries(node.name))
    return [i for i in insts if i.admin_state == "up"]


def collector_data(cluster: SimCluster, node: SimNode, name: str) -> Any:
    """The ``data`` of collector ``name`` on ``node`` (deterministic)."""
    if name == "diagnose":
        return node.diagnose
    running = _running_primaries(cluster, node)
    if name == "cpu-avg-load":
        cpus = max(node.ctotal, 1)
        if node.cpu_load is not None:
            total = node.cpu_load
        else:
            total = min(float(cpus), 0.05 * cpus + 0.25 * sum(i.vcpus for i in running))
        return {"cpu_number": cpus, "cpus": [total / cpus] * cpus, "cpu_total": total}
    if name == "xen-cpu-avg-load":
        return {i.name: 0.25 * i.vcpus for i in running if i.hypervisor.startswith("xen")}
    if name == "kvm-inst-rss":
        return {i.name: i.memory * 1024 // PAGE_KIB for i in running if i.hypervisor == "kvm"}
    raise KeyError(name)


class MondResource(resource.Resource):
    isLeaf = True

    def __init__(self, sim: Simulation, node: str, wallclock: Callable[[], float]) -> None:
        super().__init__()
        self.sim = sim
        self.node = node
        self.wallclock = wallclock
        self.hung: list[IRequest] = []
        self.delayed: list[Any] = []

    def render_GET(self, request: IRequest) -> Any:  # noqa: N802
        mode = self.sim.faults.mond_mode(self.node)
        if mode == "hang":
            self.hung.append(request)
            return server.NOT_DONE_YET
        if mode == "garbage":
            request.setHeader(b"Content-Type", b"application/json")
            return b'{"name": "diagnose", "data": {"status": '
        status, body = self.answer(request.path.decode("utf-8", "replace"))
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json" if status == 200 else b"text/plain")
        if mode == "slow":
            call = self.sim.clock.callLater(self.sim.faults.mond_delay, self._send, request, body)
            self.delayed.append((call, request))
            request.notifyFinish().addErrback(  # type: ignore[attr-defined]
                lambda _: call.active() and call.cancel()
            )
            return server.NOT_DONE_YET
        return body

    @staticmethod
    def _send(request: IRequest, body: bytes) -> None:
        request.write(body)
        request.finish()

    def answer(self, path: str) -> tuple[int, bytes]:
        cluster = self.sim.cluster
        node = cluster.nodes.get(self.node)
        if node is None:
            return 404, NOT_FOUND
        now = self.wallclock()
        parts = [p for p in path.split("/") if p]
        if parts == ["1", "list", "collectors"]:
            return 200, json.dumps([list(c) for c in COLLECTORS]).encode()
        if parts == ["1", "report", "all"]:
            reports = [
                _report(n, c, k, collector_data(cluster, node, n), now) for n, c, k in COLLECTORS
            ]
            return 200, json.dumps(reports).encode()
        if len(parts) == 4 and parts[:2] == ["1", "report"]:
            for n, c, k in COLLECTORS:
                if parts[2] == c and parts[3] == n:
                    data = collector_data(cluster, node, n)
                    return 200, json.dumps(_report(n, c, k, data, now)).encode()
        if parts in ([], ["1"]):
            return 200, b"[1]" if not parts else b"null"
        return 404, NOT_FOUND

    def release(self) -> None:
        """Drop the connections of hung requests and forget delayed answers."""
        delayed, self.delayed = self.delayed, []
        hung, self.hung = self.hung, []
        for call, request in delayed:
            if call.active():
                call.cancel()
                hung.append(request)
        for request in hung:
            transport = getattr(request, "channel", None)
            transport = getattr(transport, "transport", None)
            if transport is not None:
                transport.abortConnection()


class _QuietSite(server.Site):
    """One node's mond site: no access log, no factory start/stop lines.

    Its log prefix names the node and address, so Twisted's "<prefix>
    starting on <port>" line says which mond it is; the daemon's log shows
    that line only with -d (:data:`maintd.daemon.logsetup.DEBUG_TEXT`).
    """

    noisy = False

    def __init__(self, resource: Any, node: str = "", address: str = "") -> None:
        super().__init__(resource)
        self.label = f"{SITE_PREFIX}{node} at {address}"
        #: Open connections (a client may keep one between requests).
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        return channel

    def drop_connections(self) -> None:
        """Abort every open connection (the node went down)."""
        for channel in list(self.channels):
            # Site.buildProtocol's protocol wraps the HTTP channel
            inner = getattr(channel, "_channel", channel)
            transport = getattr(inner, "transport", None)
            if transport is not None:
                transport.abortConnection()

    def logPrefix(self) -> str:  # noqa: N802
        return self.label

    def log(self, request: Any) -> None:
        pass

    # No access log: no log file and no per-second log date timer either
    # (a thousand sites would run a thousand timers a second).
    def startFactory(self) -> None:  # noqa: N802
        pass

    def stopFactory(self) -> None:  # noqa: N802
        pass


class _MondPort(tcp.Port):
    """A node's listening mond port; its "closed" line names the node, at debug."""

    def _logConnectionLostMsg(self) -> None:
        log.debug("{label}:{port} closed", label=self._getLogPrefix(self.factory),
                  port=self._realPortNumber)


class MondFronts:
    """One listening mond per node; follows the simulation's mond modes."""

    def __init__(
        self,
        sim: Simulation,
        reactor: Any,
        port: int,
        *,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.sim = sim
        self.reactor = reactor
        self.port = port
        self.wallclock = wallclock
        self.resources: dict[str, MondResource] = {}
        self.ports: dict[str, Any] = {}
        self.sites: dict[str, _QuietSite] = {}
        sim.mond_listeners.append(self._mode_changed)

    def start(self) -> None:
        for name in self.sim.cluster.nodes:
            self.resources[name] = MondResource(self.sim, name, self.wallclock)
            if self.sim.faults.mond_mode(name) != "down":
                self._listen(name)

    def _listen(self, name: str) -> None:
        node = self.sim.cluster.nodes[name]
        site = _QuietSite(self.resources[name], name, node.pip)
        self.sites[name] = site
        port = _MondPort(self.port, site, interface=node.pip, reactor=self.reactor)
        port.startListening()
        self.ports[name] = port

    def _mode_changed(self, name: str, mode: str) -> None:
        if name not in self.resources:
            return  # not started
        if mode == "down" and name in self.ports:
            self.ports.pop(name).stopListening()
            self.resources[name].release()
            site = self.sites.pop(name, None)
            if site is not None:  # a node that is down keeps no connection
                site.drop_connections()
        elif mode != "down" and name not in self.ports:
            try:
                self._listen(name)
            except Exception as err:  # a CannotListenError must not stop the simulator
                log.error("sim: mond of {node} cannot listen again: {err}", node=name, err=err)
        if mode != "hang":
            self.resources[name].release()

    def stop(self) -> defer.Deferred[Any]:
        ports, self.ports = self.ports, {}
        for res in self.resources.values():
            res.release()
        waits = [defer.maybeDeferred(p.stopListening) for p in ports.values()]
        sites, self.sites = self.sites, {}
        if any(site.channels for site in sites.values()):
            for site in sites.values():  # connections a client kept
                site.drop_connections()
            # the aborted connections end on the next reactor turn
            waits.append(task.deferLater(self.reactor, 0, lambda: None))
        return defer.gatherResults(waits)
