"""Live-repair executors: who carries out a node's repair command.

Ganeti 3.x has no repair-command opcode (2.17's ``OpRepairCommand`` ran a
script from ``/etc/ganeti/node-repair-commands`` on the node, fed the
report on stdin).  The round hands a live-repair incident to an
:class:`IRepairExecutor`.  The default, :class:`AgentExecutor`, asks the
node's agent (``ganeti-maintd-agent``) with a signed ``POST /1/repair``;
:class:`CommandExecutor` (``--repair-command``) runs a configured local
program (e.g. a wrapper that ssh-es to the node) with the node name and
command as arguments and the report on stdin; exit status 0 is success.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from zope.interface import Interface, implementer

from maintd.cluster.model import Node

log = Logger()

#: Output kept from a repair program (bytes).
MAX_OUTPUT = 64 * 1024


class ExecutorConfigError(Exception):
    """The configured repair program is unusable; the message names it."""


def check_program(path: str, *, uid: int | None = None) -> None:
    """Refuse a repair program the daemon should not run.

    It must be an absolute path to an existing regular, executable file,
    owned by root or by the daemon's user (``uid``, default: the effective
    uid) and not writable by group or others: whoever can change it runs
    commands as the daemon.  Raises :class:`ExecutorConfigError`.
    """
    if not os.path.isabs(path):
        raise ExecutorConfigError(f"repair command {path!r} must be an absolute path")
    try:
        st = os.stat(path)
    except OSError as e:
        raise ExecutorConfigError(f"repair command {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ExecutorConfigError(f"repair command {path} is not a regular file")
    if not st.st_mode & 0o111 or not os.access(path, os.X_OK):
        raise ExecutorConfigError(f"repair command {path} is not executable")
    owner = os.geteuid() if uid is None else uid
    if st.st_uid not in (0, owner):
        raise ExecutorConfigError(
            f"repair command {path} is owned by uid {st.st_uid}, "
            f"not by root or the daemon's user (uid {owner})"
        )
    if st.st_mode & 0o022:
        raise ExecutorConfigError(
            f"repair command {path} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); make it 0755 or stricter"
        )


@attrs.frozen
class RepairResult:
    ok: bool
    #: Why it failed (empty on success).
    reason: str = ""
    output: str = ""
    #: Not carried out this time, try again next round (agent busy or not
    #: reachable); the incident stays pending.
    retry: bool = False


class IRepairExecutor(Interface):
    def execute(
        node: Node, command: str, report: Mapping[str, Any], incident: str = ""
    ) -> defer.Deferred[RepairResult]:
        """Carry out ``command`` (a plain command name from the node's report) on ``node``
        for incident ``incident`` (its uuid).

        Never fails the Deferred for a failed repair: the result says so.
        """


@implementer(IRepairExecutor)
class NoExecutor:
    """No executor configured: every live repair fails, saying so."""

    REASON = "no repair executor configured"

    def execute(
        self, node: Node, command: str, report: Mapping[str, Any], incident: str = ""
    ) -> defer.Deferred[RepairResult]:
        return defer.succeed(RepairResult(ok=False, reason=self.REASON))


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes, done: defer.Deferred[tuple[int | None, bytes]]) -> None:
        self.stdin = stdin
        self.done = done
        self.out = bytearray()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        if len(self.out) < MAX_OUTPUT:
            self.out += data[: MAX_OUTPUT - len(self.out)]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code: int | None = None
        if reason.check(error.ProcessDone):
            code = 0
        elif reason.check(error.ProcessTerminated):
            code = reason.value.exitCode
        self.done.callback((code, bytes(self.out)))


@implementer(IRepairExecutor)
class CommandExecutor:
    """Runs ``argv + [node name, command]`` locally, the report JSON on stdin."""

    def __init__(self, reactor: Any, argv: Sequence[str], *, timeout: float = 600.0) -> None:
        if not argv or not os.path.isabs(argv[0]):
            raise ValueError(f"repair executor program must be an absolute path, not {argv!r}")
        self.reactor = reactor
        self.argv = list(argv)
        self.timeout = timeout

    def execute(
        self, node: Node, command: str, report: Mapping[str, Any], incident: str = ""
    ) -> defer.Deferred[RepairResult]:
        return defer.Deferred.fromCoroutine(self._run(node, command, report))

    async def _run(self, node: Node, command: str, report: Mapping[str, Any]) -> RepairResult:
        done: defer.Deferred[tuple[int | None, bytes]] = defer.Deferred()
        argv = [*self.argv, node.name, command]
        stdin = json.dumps(dict(report), sort_keys=True).encode()
        try:
            proc = self.reactor.spawnProcess(
                _Collect(stdin, done), argv[0], argv, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            )
        except OSError as e:
            return RepairResult(ok=False, reason=f"cannot start {argv[0]}: {e}")
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            try:
                proc.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

        call = self.reactor.callLater(self.timeout, expire)
        code, out = await done
        if call.active():
            call.cancel()
        text = out.decode("utf-8", "replace")
        if timed_out:
            return RepairResult(False, f"{argv[0]} for {node.name} took longer than {self.timeout:g}s", text)
        if code != 0:
            return RepairResult(False, f"{argv[0]} {command} on {node.name} exited with {code}", text)
        log.info("repair {command} on {node} succeeded", command=command, node=node.name)
        return RepairResult(True, "", text)


@implementer(IRepairExecutor)
class AgentExecutor:
    """Live repairs through the node's agent: ``POST /1/repair``, signed.

    The request names the node, the incident, the command, the report, a
    fresh nonce and the time, signed with the cluster HMAC key; the agent
    runs the whitelisted command once per incident and answers (signed)
    with the exit status and an output tail.  A busy (409) or unreachable
    agent means "try again next round": the agent records each incident's
    result, so asking again never runs a command twice.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        key: bytes | None,
        port: int = 1817,
        cert: str | None = None,
        timeout: float = 600.0,
        wallclock: Any = None,
        http: Any = None,
    ) -> None:
        import time

        self.reactor = reactor
        self.key = key
        self.port = port
        self.scheme = "http" if cert is None else "https"
        self.timeout = timeout
        self.wallclock = wallclock or time.time
        if http is None:
            import treq
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = HTTPConnectionPool(reactor, persistent=False)
            if cert is None:
                agent = Agent(reactor, pool=pool)
            else:
                from maintd.cluster.rapi.tls import PinnedCertificatePolicy

                policy = PinnedCertificatePolicy.from_file(cert)
                policy.what = "node agent"
                agent = Agent(reactor, contextFactory=policy, pool=pool)
            http = treq.client.HTTPClient(agent)
        self.http = http

    def url(self, node: Node) -> str:
        host = f"[{node.pip}]" if ":" in (node.pip or "") else node.pip
        return f"{self.scheme}://{host}:{self.port}/1/repair"

    def execute(
        self, node: Node, command: str, report: Mapping[str, Any], incident: str = ""
    ) -> defer.Deferred[RepairResult]:
        return defer.Deferred.fromCoroutine(self._run(node, command, report, incident))

    async def _run(self, node: Node, command: str, report: Mapping[str, Any],
                   incident: str) -> RepairResult:
        import secrets

        import treq

        from maintd.common import signing, strictjson

        if self.key is None:
            return RepairResult(False, "no HMAC key (--hmac-key) to sign the repair request")
        if not node.pip:
            return RepairResult(False, f"node {node.name} has no primary IP", retry=True)
        now = self.wallclock()
        body = signing.dumps({"node": node.name, "incident": incident, "command": command,
                              "report": dict(report), "nonce": secrets.token_hex(16),
                              "time": now}, self.key, now)
        url = self.url(node)
        try:
            response = await self.http.post(
                url, data=body, headers={"Content-Type": ["application/json"]},
                timeout=self.timeout + 30)
            data = await treq.content(response)
        except Exception as e:
            log.warn("repair {command} on {node}: agent at {url} not reachable: {error}",
                     command=command, node=node.name, url=url, error=e)
            return RepairResult(False, f"agent on {node.name} not reachable: {e}", retry=True)
        source = f"agent on {node.name}"
        try:
            answer, _ = signing.loads(data[:MAX_OUTPUT * 4], self.key, self.wallclock(),
                                      source=source)
        except (strictjson.StrictJSONError, signing.SignatureError) as e:
            return RepairResult(False, f"answer of the {source} (HTTP {response.code}) "
                                f"refused: {e}")
        if not isinstance(answer, dict):
            return RepairResult(False, f"answer of the {source} is not an object")
        if response.code == 409:
            return RepairResult(False, f"{source} is busy: {answer.get('error', '')}",
                                retry=True)
        if response.code != 200:
            return RepairResult(False, f"{source} refused the repair (HTTP {response.code}): "
                                f"{str(answer.get('error', ''))[:500]}")
        if answer.get("incident") != incident or answer.get("node") != node.name:
            return RepairResult(False, f"answer of the {source} is for another incident")
        output = str(answer.get("output", ""))[-MAX_OUTPUT:]
        if answer.get("ok") is True:
            log.info("repair {command} on {node} succeeded (agent)", command=command,
                     node=node.name)
            return RepairResult(True, "", output)
        reason = str(answer.get("reason") or f"repair command {command} failed")
        return RepairResult(False, f"{reason} on {node.name}", output)
