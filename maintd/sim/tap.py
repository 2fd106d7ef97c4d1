"""``twistd -n ganeti-sim``: the simulated cluster as a standalone service.

In the foreground (``-n``) no pid file is written unless ``--pidfile`` is
given (twistd would write ``twistd.pid`` into the working directory, and a
second simulator there would refuse to start).  Without ``--workdir`` the
certificate and password files go into a temporary directory that is
removed when the simulator stops.  A usage error is one line on stderr and
exit 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application import service
from twisted.python import usage

from maintd.common.cli import one_line_usage
from maintd.common.signing import KeyFileError
from maintd.common.tempdir import temporary_dir
from maintd.sim.scenario import ScenarioError


def _port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not a port number: {text!r}") from None


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None


class SimOptions(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Simulated Ganeti 3.0 cluster: RAPI on 127.0.0.1 (HTTPS with a generated"
        " self-signed certificate unless --plain-http) and one monitoring daemon per"
        " node on its own 127.x.y.z address, with a node agent signing its"
        " self-diagnose report (TLS with a generated server.pem unless --plain-http)."
    )
    optParameters = [
        ["scenario", "s", None, "Scenario JSON/YAML, hbal text file or snapshot (default: demo)"],
        ["rapi-port", None, 0, "RAPI port on 127.0.0.1 (0: a free one)", _port],
        ["mond-port", None, 1815, "Port of each node's monitoring daemon", _port],
        ["agent-port", None, 1817, "Port of each node's agent (ganeti-maintd-agent)", _port],
        ["hmac-key", None, None, "Cluster HMAC key file the agents sign with (default: "
         "generate one in the work directory)"],
        ["job-seconds", None, 2.0, "How long a job runs (seconds)", _seconds],
        ["rapi-users", None, None, "Ganeti users file (default: generate a write user)"],
        ["workdir", None, None, "Where to write the certificate and password files"],
    ]
    optFlags = [
        ["anonymous-reads", None, "Answer GETs without credentials (for hbal -m)"],
        ["plain-http", None, "Serve RAPI over plain HTTP"],
    ]

    def postOptions(self) -> None:  # noqa: N802
        if self["job-seconds"] < 0:
            raise usage.UsageError("--job-seconds must not be negative")
        if self["hmac-key"] and not os.path.exists(self["hmac-key"]):
            raise usage.UsageError(f"HMAC key file {self['hmac-key']} does not exist")
        for key in ("rapi-port", "mond-port", "agent-port"):
            if not 0 <= self[key] <= 65535:
                raise usage.UsageError(f"--{key} must be a port number")
        if self["scenario"] and not os.path.exists(self["scenario"]):
            raise usage.UsageError(f"scenario file {self['scenario']} does not exist")
        _no_default_pidfile(self.parent)


#: twistd's default pid file name (``--pidfile``'s default).
TWISTD_PIDFILE = "twistd.pid"


def _no_default_pidfile(twistd_options: Any, argv: list[str] | None = None) -> None:
    """In the foreground, drop twistd's default pid file unless asked for.

    Runs while twistd parses its command line, before it checks or writes
    the pid file.  "Asked for": any ``--pid...`` option on the command line.
    """
    if twistd_options is None or not twistd_options.get("nodaemon"):
        return
    args = sys.argv[1:] if argv is None else argv
    if any(a.startswith("--pid") for a in args):
        return
    if twistd_options.get("pidfile") == TWISTD_PIDFILE:
        twistd_options["pidfile"] = ""


#: twistd's option class for the plugin (one-line usage errors, exit 2).
Options = one_line_usage(SimOptions, "twistd ganeti-sim")


class SimulatorService(service.MultiService):
    """The standalone simulator: its temporary directory (removed last, when
    there is one) and the :class:`~maintd.sim.embed.EmbeddedSimulator`."""

    simulator: Any = None


def makeService(config: SimOptions, reactor: Any = None) -> service.IService:  # noqa: N802
    from maintd.sim.embed import EmbeddedSimulator

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    top = SimulatorService()
    if config["workdir"]:
        workdir = config["workdir"]
    else:
        temp = temporary_dir("ganeti-sim-")
        temp.setServiceParent(top)  # first child: stops (removes the dir) last
        workdir = temp.path
    try:
        sim = EmbeddedSimulator(
            reactor,
            workdir,
            scenario=config["scenario"],
            job_seconds=config["job-seconds"],
            mond_port=config["mond-port"],
            rapi_port=config["rapi-port"],
            plain_http=config["plain-http"],
            rapi_users=config["rapi-users"],
            anonymous_reads=config["anonymous-reads"],
            agent_port=config["agent-port"],
            hmac_key=config["hmac-key"],
        )
    except (ScenarioError, ValueError, KeyFileError) as err:
        raise SystemExit(f"ganeti-sim: {err}") from err
    out = sys.stdout
    out.write(f"ganeti-sim RAPI: {sim.rapi_url}\n")
    if not config["plain-http"]:
        out.write(f"ganeti-sim certificate: {sim.rapi_cert}\n")
    if sim.generated_password:
        out.write(f"ganeti-sim RAPI user: {sim.rapi_user} password: {sim.generated_password}\n")
        out.write(f"ganeti-sim password file: {sim.rapi_password_file}\n")
    if sim.generated_hmac_key:
        out.write(f"ganeti-sim HMAC key: {sim.hmac_key_file}\n")
    if not config["plain-http"]:
        out.write(f"ganeti-sim agent certificate: {sim.agent_cert}\n")
    out.write(f"ganeti-sim agents: port {sim.agent_port} of each node's address\n")
    out.flush()
    sim.setServiceParent(top)
    top.simulator = sim
    return top
