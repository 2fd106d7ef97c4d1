"""Live-repair executors: who carries out a node's repair command.

Ganeti 3.x has no repair-command opcode (2.17's ``OpRepairCommand`` ran a
script from ``/etc/ganeti/node-repair-commands`` on the node, fed the
report on stdin).  The round hands a live-repair incident to an
:class:`IRepairExecutor`; without one configured the incident fails with
that reason.  :class:`CommandExecutor` runs a configured local program
(e.g. a wrapper that ssh-es to the node) with the node name and command as
arguments and the report on stdin; exit status 0 is success.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from zope.interface import Interface, implementer

from maintd.model import Node

log = Logger()

#: Output kept from a repair program (bytes).
MAX_OUTPUT = 64 * 1024


@attrs.frozen
class RepairResult:
    ok: bool
    #: Why it failed (empty on success).
    reason: str = ""
    output: str = ""


class IRepairExecutor(Interface):
    def execute(node: Node, command: str, report: Mapping[str, Any]) -> defer.Deferred[RepairResult]:
        """Carry out ``command`` (a plain command name from the node's report) on ``node``.

        Never fails the Deferred for a failed repair: the result says so.
        """


@implementer(IRepairExecutor)
class NoExecutor:
    """No executor configured: every live repair fails, saying so."""

    REASON = "no repair executor configured"

    def execute(
        self, node: Node, command: str, report: Mapping[str, Any]
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
        self, node: Node, command: str, report: Mapping[str, Any]
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
