"""In-process simulator: a Twisted service for ``--simulate`` and for tests.

Right after construction the RAPI URL, the user, the password file and the
certificate file are known (the constructor picks a free 127.0.0.1 port when
``rapi_port`` is 0 and writes the files into ``workdir``), as are the agents'
HMAC key file (``hmac_key``, else a new one in ``workdir``) and certificate
(``server.pem``); :meth:`startService` listens (RAPI on 127.0.0.1, one mond
and one signed node agent per node on its own 127.a.b.c address) and starts
the scenario's timed events on ``clock``.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, ssl
from twisted.logger import Logger
from twisted.web import server

from maintd.common import signing
from maintd.sim import scenario as scenario_mod
from maintd.sim import tls
from maintd.sim.agents import AgentFronts
from maintd.sim.cluster import SimCluster, pip_block
from maintd.sim.faults import parse_rapi_fault
from maintd.sim.mond import MondFronts
from maintd.sim.rapi import RapiFront
from maintd.sim.runtime import Simulation
from maintd.sim.users import User, load_users

log = Logger()

DEFAULT_USER = "maintd"


def free_port(interface: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((interface, 0))
        return int(s.getsockname()[1])


def _write_secret(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


class QuietSite(server.Site):
    """A Site without per-request access log lines (the simulator logs what matters)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class EmbeddedSimulator(service.Service):
    def __init__(
        self,
        reactor: Any,
        workdir: str,
        *,
        scenario: str | None = None,
        job_seconds: float = 2.0,
        mond_port: int = 1815,
        rapi_port: int = 0,
        plain_http: bool = False,
        clock: Any = None,
        rapi_users: str | None = None,
        anonymous_reads: bool = False,
        mond: bool = True,
        loaded: scenario_mod.Scenario | None = None,
        agent_port: int = 1817,
        hmac_key: str | None = None,
        agents: bool = True,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.scenario = loaded or scenario_mod.load(scenario)
        self.cluster = SimCluster.from_model(self.scenario.cluster, pip_block())
        for name, report in self.scenario.diagnose.items():
            self.cluster.nodes[name].diagnose = report
        for name, load in self.scenario.cpu_load.items():
            self.cluster.nodes[name].cpu_load = load
        self.sim = Simulation(
            self.cluster, self.clock, job_seconds=job_seconds, events=list(self.scenario.events)
        )
        self.sim.faults.mond.update(self.scenario.mond)
        self.mond_port = mond_port
        self.mond_enabled = mond
        self.plain_http = plain_http
        self.rapi_port = rapi_port or free_port()
        scheme = "http" if plain_http else "https"
        self.rapi_url = f"{scheme}://127.0.0.1:{self.rapi_port}"
        self.rapi_cert = os.path.join(workdir, "rapi.pem")
        self._pem = b"" if plain_http else tls.write_pem(self.rapi_cert)
        if rapi_users:
            users = load_users(rapi_users)
            writers = [u for u in users.values() if u.write]
            self.rapi_user: str | None = writers[0].name if writers else None
            self.rapi_password_file: str | None = None
            self.users_file = rapi_users
        else:
            password = secrets.token_urlsafe(18)
            users = {DEFAULT_USER: User(DEFAULT_USER, password, write=True)}
            self.rapi_user = DEFAULT_USER
            self.rapi_password_file = os.path.join(workdir, "rapi-password")
            _write_secret(self.rapi_password_file, password + "\n")
            self.users_file = os.path.join(workdir, "rapi-users")
            _write_secret(self.users_file, f"{DEFAULT_USER} {password} write\n")
            self.generated_password: str | None = password
        if rapi_users:
            self.generated_password = None
        self.front = RapiFront(self.sim, users, anonymous_reads=anonymous_reads)
        self.monds = MondFronts(self.sim, reactor, mond_port)
        # the node agents: signed with the cluster HMAC key, TLS with server.pem
        self.agent_port = agent_port
        self.agents_enabled = agents
        if hmac_key is None:
            hmac_key = os.path.join(workdir, "hmac.key")
            _write_secret(hmac_key, secrets.token_hex(20) + "\n")
            self.generated_hmac_key = True
        else:
            self.generated_hmac_key = False
        self.hmac_key_file = hmac_key
        key = signing.read_key(hmac_key)
        self.agent_cert = os.path.join(workdir, "server.pem")
        agent_pem = None if plain_http else tls.write_pem(self.agent_cert, tls.ec_key())
        self.agents = AgentFronts(self.sim, reactor, agent_port, key=key, pem=agent_pem,
                                  wallclock=wallclock)
        self._rapi_listener: Any = None

    # -- conveniences for in-process tests (the /sim/ API does the same) --------

    def set_diagnose(self, node: str, report: Any) -> None:
        """What ``node``'s mond reports as self-diagnose from now on."""
        self.sim.set_diagnose(node, report)

    def set_mond(self, node: str, mode: str) -> None:
        """``up``, ``down``, ``garbage``, ``hang`` or ``slow`` (see ``faults.mond_delay``)."""
        self.sim.set_mond(node, mode)

    def set_repair(self, command: str, exit_status: int) -> None:
        """The exit status of simulated repair ``command`` from now on (default 0)."""
        self.agents.set_repair(command, exit_status)

    def fail_next_jobs(self, count: int) -> None:
        self.sim.set_fail_next(count)

    def rapi_fault(self, fault: Any) -> None:
        """``{"status": 503, "count": 1}``, ``"garbage"``, ``"hang"`` or ``"clear"``."""
        self.sim.faults.add_rapi(parse_rapi_fault(fault))

    def state(self) -> dict[str, Any]:
        """What ``GET /sim/state`` answers."""
        return self.sim.state_json()

    def startService(self) -> None:  # noqa: N802
        super().startService()
        site = QuietSite(self.front.resource())
        if self.plain_http:
            self._rapi_listener = self.reactor.listenTCP(
                self.rapi_port, site, interface="127.0.0.1"
            )
        else:
            cert = ssl.PrivateCertificate.loadPEM(self._pem.decode("ascii"))
            self._rapi_listener = self.reactor.listenSSL(
                self.rapi_port, site, cert.options(), interface="127.0.0.1"
            )
        if self.mond_enabled:
            self.monds.start()
        if self.agents_enabled:
            self.agents.start()
        self.sim.start()
        pips = [n.pip for n in self.cluster.nodes.values()]
        log.info(
            "ganeti-sim: cluster {name}: {nodes} nodes, {insts} instances; RAPI at {url},"
            " mond on port {port} and the agent on port {aport} of each node's address"
            " ({pips})",
            name=self.cluster.name,
            nodes=len(self.cluster.nodes),
            insts=len(self.cluster.instances),
            url=self.rapi_url,
            port=self.mond_port,
            aport=self.agent_port,
            pips=f"{pips[0]} to {pips[-1]}" if len(pips) > 1 else ", ".join(pips) or "none",
        )

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802
        super().stopService()
        self.sim.stop()
        self.front.stop()
        waits = [self.monds.stop(), self.agents.stop()]
        if self._rapi_listener is not None:
            listener, self._rapi_listener = self._rapi_listener, None
            waits.append(defer.maybeDeferred(listener.stopListening))
        return defer.gatherResults(waits).addCallback(lambda _: None)
