"""``twistd ganeti-maintd-agent``: options and service composition.

Everything the agent needs is checked in :func:`makeService`, before twistd
daemonises: a missing or unreadable HMAC key, certificate, whitelist
directory or state directory is one line naming the file and a non-zero
exit (``SystemExit``), nothing listening.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from maintd.agent import runner, whitelist
from maintd.agent.diagnose import DiagnoseCollector
from maintd.agent.http import AgentResource, QuietSite, tls_options
from maintd.agent.repair import MAX_TAIL, RepairService, RepairState
from maintd.agent.replica import ReplicaStore
from maintd.common import jsonlog, signing, tlsproto
from maintd.common.strictjson import StrictJSONError
from maintd.daemon.config import parse_log_format

log = Logger()

SERVICE_NAME = "ganeti-maintd-agent"
FALLBACK_PORT = 1817
DEFAULT_DIAGNOSE_DIR = "/etc/ganeti/node-diagnose-commands"
DEFAULT_REPAIR_DIR = "/etc/ganeti/node-repair-commands"
DEFAULT_STATE_DIR = "/var/lib/ganeti-maintd-agent"
DEFAULT_CERT = "/var/lib/ganeti/server.pem"


def default_port() -> int:
    """The services database's ``ganeti-maintd-agent/tcp`` port, else 1817."""
    try:
        return socket.getservbyname(SERVICE_NAME, "tcp")
    except OSError:
        return FALLBACK_PORT


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range 0-65535: {port}")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"must be a finite number > 0: {text!r}")
    return value


class Options(usage.Options):
    synopsis = "[-d] [-p PORT] [-b ADDRESS] [--diagnose-command NAME] [options]"
    longdesc = (
        "ganeti-maintd-agent runs on every node: it serves the node's self-diagnose "
        "report, signed with the cluster HMAC key, at /1/report/node/diagnose, and "
        "runs whitelisted repair commands on signed requests from ganeti-maintd "
        "(POST /1/repair).  See ganeti-maintd-agent(8)."
    )
    optFlags = [
        ["debug", "d", "Log debug-level events."],
        ["plain-http", None, "Serve plain HTTP instead of TLS (testing only)."],
    ]
    optParameters = [
        ["port", "p", None, f"TCP port [default: the services database entry "
         f"{SERVICE_NAME}/tcp, else {FALLBACK_PORT}].", _port],
        ["bind", "b", "0.0.0.0", "Address to listen on.", None],
        ["diagnose-command", None, None, "Name of the diagnose command in --diagnose-dir "
         "[default: none, the built-in diagnose that always reports Ok]."],
        ["diagnose-dir", None, DEFAULT_DIAGNOSE_DIR, "Whitelist directory of diagnose commands."],
        ["diagnose-interval", None, 60.0, "Seconds between diagnose runs.", _seconds],
        ["diagnose-timeout", None, 30.0, "Seconds a diagnose run may take.", _seconds],
        ["repair-dir", None, DEFAULT_REPAIR_DIR, "Whitelist directory of repair commands."],
        ["repair-timeout", None, 600.0, "Seconds a repair command may take.", _seconds],
        ["hmac-key", None, signing.DEFAULT_KEY_FILE, "The cluster HMAC key file."],
        ["ssl-cert", None, DEFAULT_CERT, "Certificate and key to serve TLS with "
         "(the node's cluster certificate)."],
        ["state-dir", None, DEFAULT_STATE_DIR, "Directory of the durable repair records "
         "(seen nonces, one result per incident)."],
        ["hostname", None, None, "This node's name as the cluster knows it "
         "[default: this host's FQDN]."],
        ["log-format", None, "text", "Log as text (twistd's format) or json (one JSON "
         "object per line, for log shippers; needs the ganeti-maintd-agent command).",
         parse_log_format],
    ]

    def postOptions(self) -> None:  # noqa: N802
        if self["port"] is None:
            self["port"] = default_port()
        if not self["hostname"]:
            self["hostname"] = socket.getfqdn()
        cmd = self["diagnose-command"]
        if cmd:
            try:
                whitelist.check_name(cmd)
            except whitelist.WhitelistError as e:
                raise usage.UsageError(f"--diagnose-command: {e}") from None


class _Listen(StreamServerEndpointService):
    def __init__(self, endpoint: Any, factory: Any, where: str, tls: bool = False) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self.where = where
        self.tls = tls

    def privilegedStartService(self) -> None:  # noqa: N802
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(f"ganeti-maintd-agent: cannot listen on {self.where}: "
                             f"{e.socketError}") from None
        if self.tls and self._waitingForPort is not None:
            # as listenSSL's port: its log lines say TLS
            self._waitingForPort.addCallback(tlsproto.labelled_tls)


class AgentService(service.MultiService):
    collector: DiagnoseCollector
    repairs: RepairService
    resource: AgentResource
    site: QuietSite


def _fail(message: str) -> SystemExit:
    return SystemExit(f"ganeti-maintd-agent: {message}; not starting")


def _tls_options(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise _fail(f"cannot read certificate {path}: {e.strerror}") from None
    try:
        return tls_options(pem)
    except Exception as e:
        raise _fail(f"certificate {path} is not a PEM key and certificate: {e}") from None


def makeService(options: Options | dict[str, Any], reactor: Any = None,  # noqa: N802
                wallclock: Any = time.time) -> AgentService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    o = options
    jsonlog.require_installed("ganeti-maintd-agent", o.get("log-format", "text"))
    try:
        key = signing.read_key(o["hmac-key"])
    except signing.KeyFileError as e:
        raise _fail(str(e)) from None
    tls = None if o["plain-http"] else _tls_options(o["ssl-cert"])
    command = o["diagnose-command"] or None
    dirs = [o["repair-dir"]] + ([o["diagnose-dir"]] if command else [])
    for d in dirs:
        try:
            whitelist.check_dir(d)
        except whitelist.WhitelistError as e:
            raise _fail(str(e)) from None
    try:
        os.makedirs(o["state-dir"], mode=0o700, exist_ok=True)
        state = RepairState(o["state-dir"])
    except (OSError, ValueError, StrictJSONError) as e:
        raise _fail(f"state directory {o['state-dir']}: {e}") from None

    top = AgentService()
    from maintd.daemon.logsetup import LogLevelService

    level = LogLevelService(bool(o["debug"]))
    level.setServiceParent(top)
    collector = DiagnoseCollector(reactor, command=command, directory=o["diagnose-dir"],
                                  timeout=o["diagnose-timeout"], wallclock=wallclock)
    timer = TimerService(o["diagnose-interval"], collector.run_once)
    timer.clock = reactor
    timer.setServiceParent(top)
    repair_dir, repair_timeout = o["repair-dir"], o["repair-timeout"]

    async def execute(path: str, stdin: bytes) -> runner.RunResult:
        return await runner.run(reactor, path, stdin=stdin, timeout=repair_timeout,
                                max_stdout=0, max_tail=MAX_TAIL)

    repairs = RepairService(
        node=o["hostname"], key=key, state=state,
        resolve=lambda name: whitelist.resolve(repair_dir, name),
        execute=execute, timeout=repair_timeout, wallclock=wallclock,
    )
    res = AgentResource(key=key, data=lambda: (collector.data, collector.when),
                        repairs=repairs, wallclock=wallclock,
                        replica=ReplicaStore(o["state-dir"], key, wallclock))
    site = QuietSite(res)
    bind, port = o["bind"], o["port"]
    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface=bind)
    # over TLS: what SSL4ServerEndpoint does, with less work per connection
    served: Any = site if tls is None else tlsproto.ServerTLSFactory(tls, False, site)
    listen = _Listen(endpoint, served, f"{bind} port {port}", tls=tls is not None)
    listen.setServiceParent(top)
    top.collector, top.repairs, top.resource, top.site = collector, repairs, res, site
    log.info("ganeti-maintd-agent for {node} on {bind} port {port} ({proto}); diagnose: "
             "{diag}; repairs from {rdir}", node=o["hostname"], bind=bind, port=port,
             proto="plain HTTP" if tls is None else "TLS", diag=command or "built-in (Ok)",
             rdir=repair_dir)
    return top
