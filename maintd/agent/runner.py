"""Run one whitelisted script, bounded in time and output.

The script runs in a session (and process group) of its own, started
through ``setsid``; its pid is the group id.  When it exits, overruns its
time, or prints more than the stdout bound, the whole group is killed
(SIGKILL), so children it forked and left behind cannot outlive it or
hold its output pipes open.  A child that escaped into a session of its
own still cannot stall us: the pipes are closed a moment after the script
exits.  No shell, a fixed minimal environment, no arguments.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from typing import Any

import attrs
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

log = Logger()

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
#: Seconds the pipes may stay open after the script itself has exited.
PIPE_GRACE = 1.0
_SETSID = shutil.which("setsid") or ""
_PY_SETSID = "import os, sys; os.setsid(); os.execve(sys.argv[1], sys.argv[1:], os.environ)"


@attrs.frozen
class RunResult:
    """How a script run ended."""

    #: Exit status; None when it was killed by a signal or never started.
    exit_status: int | None
    signal: int | None = None
    #: Standard output from the start, at most the stdout bound.
    stdout: bytes = b""
    #: The last bytes of the output (stdout and stderr interleaved).
    tail: bytes = b""
    timed_out: bool = False
    #: Standard output passed the bound; the script was killed.
    overflow: bool = False
    #: Why it could not be started (empty when it was).
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not (self.timed_out or self.overflow or self.error)

    def describe(self, what: str, timeout: float, max_stdout: int) -> str:
        """Why ``what`` failed, one line (empty when it did not)."""
        if self.error:
            return f"{what} could not be started: {self.error}"
        if self.timed_out:
            return f"{what} did not finish within {timeout:g}s and was killed"
        if self.overflow:
            return f"{what} printed more than {max_stdout} bytes and was killed"
        if self.signal is not None:
            return f"{what} was killed by signal {self.signal}"
        if self.exit_status != 0:
            return f"{what} exited with status {self.exit_status}"
        return ""


class _Proto(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes, max_stdout: int, max_tail: int, reactor: Any) -> None:
        self.stdin = stdin
        self.max_stdout = max_stdout
        self.max_tail = max_tail
        self.reactor = reactor
        self.stdout = bytearray()
        self.tail = bytearray()
        self.overflow = False
        self.exited: Any = None
        self.done: defer.Deferred[None] = defer.Deferred()
        self._grace: Any = None

    def connectionMade(self) -> None:  # noqa: N802
        assert self.transport is not None
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def _keep_tail(self, data: bytes) -> None:
        self.tail += data
        if len(self.tail) > self.max_tail:
            del self.tail[: len(self.tail) - self.max_tail]

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self._keep_tail(data)
        if self.overflow or self.max_stdout <= 0:
            return
        room = self.max_stdout - len(self.stdout)
        if len(data) > room:
            self.stdout += data[: max(room, 0)]
            self.overflow = True
            self.kill_group()
        else:
            self.stdout += data

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self._keep_tail(data)

    def kill_group(self) -> None:
        pid = getattr(self.transport, "pid", None)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def processExited(self, reason: Any) -> None:  # noqa: N802
        self.exited = reason
        # kill what it left behind in its group; they may hold the pipes
        pid = getattr(self.transport, "pid", None)
        if pid is None:
            pid = getattr(self, "_pid", None)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._grace = self.reactor.callLater(PIPE_GRACE, self._close_pipes)

    def _close_pipes(self) -> None:
        transport = self.transport
        if transport is not None and not self.done.called:
            for fd in (1, 2):
                try:
                    transport.closeChildFD(fd)
                except Exception:  # already closed
                    pass

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        if self.exited is None:
            self.exited = reason
        if not self.done.called:
            self.done.callback(None)


async def run(
    reactor: Any,
    path: str,
    *,
    stdin: bytes = b"",
    timeout: float,
    max_stdout: int,
    max_tail: int = 4096,
) -> RunResult:
    """Run ``path`` (no arguments) in its own process group; see the module doc.

    ``max_stdout`` <= 0: standard output is not kept nor bounded (only the tail).
    """
    if _SETSID:
        argv = [_SETSID, path]
    else:
        argv = [sys.executable, "-c", _PY_SETSID, path]
    proto = _Proto(stdin, max_stdout, max_tail, reactor)
    try:
        process = reactor.spawnProcess(proto, argv[0], argv, env=dict(ENV), path="/")
    except OSError as e:
        return RunResult(exit_status=None, error=str(e))
    proto._pid = process.pid  # type: ignore[attr-defined]
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        proto.kill_group()
        try:
            process.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    call = reactor.callLater(timeout, expire)
    try:
        await proto.done
    finally:
        if call.active():
            call.cancel()
    code: int | None = None
    sig: int | None = None
    reason = proto.exited
    if reason is not None and reason.check(error.ProcessDone):
        code = 0
    elif reason is not None and reason.check(error.ProcessTerminated):
        code = reason.value.exitCode
        sig = reason.value.signal
        if sig is not None:
            code = None
    return RunResult(
        exit_status=code,
        signal=sig,
        stdout=bytes(proto.stdout),
        tail=bytes(proto.tail),
        timed_out=timed_out,
        overflow=proto.overflow,
    )
