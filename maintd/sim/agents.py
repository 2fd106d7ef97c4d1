"""Per-node agent fronts (``ganeti-maintd-agent``) of the simulated cluster.

Each node serves the real agent's HTTP resource
(:class:`maintd.agent.http.AgentResource`) on its primary IP (127.a.b.c)
and the agent port, over TLS with the simulator's cluster certificate
(``server.pem`` in the work directory; plain HTTP with ``--plain-http``),
signing with the simulator's HMAC key: its self-diagnose report is the
node's ``diagnose`` (what the mond front serves unsigned), and
``POST /1/repair`` goes through the real request checks (signature,
freshness, node, nonce, whitelist).  A simulated repair runs nothing: it
is recorded in :attr:`AgentFronts.calls` and ends with the exit status set
for its command (:meth:`AgentFronts.set_repair`; 0 when none was set).  The
whitelist is every well-formed name unless :attr:`AgentFronts.whitelist`
is set.

The node's mond fault mode (down, hang, garbage, slow) applies to its agent
too: both stand for the node's monitoring endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.web.iweb import IRequest

from maintd.agent import runner, whitelist
from maintd.agent.http import IDLE_TIMEOUT, AgentResource, tls_options
from maintd.agent.repair import RepairService, RepairState
from maintd.agent.replica import ReplicaStore
from maintd.common import tlsproto
from maintd.sim.mond import MondFronts, MondResource, _MondPort, _QuietSite
from maintd.sim.runtime import Simulation

SITE_PREFIX = "sim agent of "


class _AgentResource(MondResource):
    """The node's mond fault modes around the real agent resource."""

    def __init__(self, sim: Simulation, node: str, wallclock: Callable[[], float],
                 agent: AgentResource) -> None:
        super().__init__(sim, node, wallclock)
        self.agent = agent

    def answer(self, path: str) -> tuple[int, bytes]:
        return 0, b""  # not used: render_GET is the agent's

    def render_GET(self, request: IRequest) -> Any:  # noqa: N802
        mode = self.sim.faults.mond_mode(self.node)
        if mode in ("hang", "garbage", "slow"):
            return super().render_GET(request)
        return self.agent.render_GET(request)

    def render_POST(self, request: IRequest) -> Any:  # noqa: N802
        if self.sim.faults.mond_mode(self.node) == "hang":
            return super().render_GET(request)
        return self.agent.render_POST(request)

    def render_PUT(self, request: IRequest) -> Any:  # noqa: N802
        if self.sim.faults.mond_mode(self.node) == "hang":
            return super().render_GET(request)
        return self.agent.render_PUT(request)


class _AgentPort(_MondPort):
    pass


class AgentFronts(MondFronts):
    """One listening agent per node; follows the simulation's mond modes."""

    def __init__(
        self,
        sim: Simulation,
        reactor: Any,
        port: int,
        *,
        key: bytes,
        pem: bytes | None,
        wallclock: Callable[[], float],
        repair_timeout: float = 600.0,
    ) -> None:
        super().__init__(sim, reactor, port, wallclock=wallclock)
        self.key = key
        self.tls = None if pem is None else tls_options(pem)
        self.repair_timeout = repair_timeout
        #: Simulated repairs run: (node, command, report).
        self.calls: list[tuple[str, str, Any]] = []
        #: Exit status per command name (absent: 0).
        self.exit_status: dict[str, int] = {}
        #: Whitelisted command names (None: every well-formed name).
        self.whitelist: set[str] | None = None
        self.services: dict[str, RepairService] = {}
        #: Each node agent's copy of the daemon's state (memory only; kept
        #: over a simulated agent restart).
        self.replicas: dict[str, ReplicaStore] = {}

    def set_repair(self, command: str, exit_status: int) -> None:
        self.exit_status[command] = exit_status

    def _resolve(self, name: str) -> str:
        whitelist.check_name(name)
        if self.whitelist is not None and name not in self.whitelist:
            raise whitelist.WhitelistError(f"command {name} is not in the simulated whitelist")
        return name

    def _executor(self, node: str) -> Callable[[str, bytes], Any]:
        async def execute(command: str, stdin: bytes) -> runner.RunResult:
            self.calls.append((node, command, json.loads(stdin)))
            code = self.exit_status.get(command, 0)
            return runner.RunResult(exit_status=code,
                                    tail=f"simulated {command} on {node}: exit {code}\n".encode())
        return execute

    def start(self) -> None:
        for name in self.sim.cluster.nodes:
            repairs = RepairService(
                node=name, key=self.key, state=RepairState(None), resolve=self._resolve,
                execute=self._executor(name), timeout=self.repair_timeout,
                wallclock=self.wallclock)
            self.services[name] = repairs
            def data(node: str = name) -> tuple[dict[str, Any], float]:
                n = self.sim.cluster.nodes.get(node)
                report = n.diagnose if n is not None else {"status": "Ok"}
                return (report if isinstance(report, dict) else {"report": report},
                        self.wallclock())

            agent = AgentResource(key=self.key, data=data, repairs=repairs,
                                  wallclock=self.wallclock,
                                  replica=self.replicas.setdefault(
                                      name, ReplicaStore(None, self.key, self.wallclock)))
            self.resources[name] = _AgentResource(self.sim, name, self.wallclock, agent)
            if self.sim.faults.mond_mode(name) != "down":
                self._listen(name)

    def _listen(self, name: str) -> None:
        node = self.sim.cluster.nodes[name]
        site = _QuietSite(self.resources[name], name, node.pip)
        site.label = f"{SITE_PREFIX}{name} at {node.pip}"
        site.timeOut = IDLE_TIMEOUT  # the daemon keeps a connection between rounds
        self.sites[name] = site
        port: Any
        if self.tls is None:
            port = _AgentPort(self.port, site, interface=node.pip, reactor=self.reactor)
        else:
            self.ports[name] = tlsproto.listen_tls(self.reactor, self.port, site, self.tls,
                                                   interface=node.pip)
            return
        port.startListening()
        self.ports[name] = port

    def stop(self) -> defer.Deferred[Any]:
        return super().stop()
