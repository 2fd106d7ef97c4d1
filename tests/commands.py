"""Run the installed console scripts (``.venv/bin/...``) as real processes.

:class:`Command` collects a child's stdout and stderr and lets a test wait,
with a bound, for a line matching a pattern or for the exit: no sleeps.
:func:`wait_until` is the bounded wait for a condition outside the child
(a daemonised process's pid file), checked every 50 ms.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

BIN = os.path.dirname(sys.executable)
TIMEOUT = 60.0


def script(name: str) -> str:
    """Path of the console script ``name`` of this virtualenv."""
    return os.path.join(BIN, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


class Command(protocol.ProcessProtocol):
    """One child process; ``out``/``err`` are its output so far (text)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.out = ""
        self.err = ""
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    # -- protocol ---------------------------------------------------------

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.out += data.decode("utf-8", "replace")
        self._check()

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.err += data.decode("utf-8", "replace")
        self._check()

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        value = reason.value
        if isinstance(value, ProcessDone):
            self.exit_code = 0
        elif isinstance(value, ProcessTerminated):
            self.exit_code = value.exitCode
            self.signal = value.signal
        self._check()
        for _, d in self._waiters:
            d.errback(AssertionError(f"{self.argv[0]} ended (exit {self.exit_code}, "
                                     f"signal {self.signal}) before the awaited output\n"
                                     f"{self.transcript()}"))
        self._waiters = []
        self.ended.callback(None)

    def _check(self) -> None:
        still = []
        for cond, d in self._waiters:
            if cond():
                d.callback(None)
            else:
                still.append((cond, d))
        self._waiters = still

    # -- waiting ----------------------------------------------------------

    def transcript(self) -> str:
        return f"$ {' '.join(self.argv)}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"

    def until(self, cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> defer.Deferred[None]:
        """Fires when ``cond()`` holds (checked on every output chunk)."""
        if cond():
            return defer.succeed(None)
        if self.ended.called:
            return defer.fail(AssertionError(f"{what}: process already ended\n{self.transcript()}"))
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((cond, d))

        def timed_out(f: Failure) -> Failure:
            f.trap(defer.TimeoutError)
            self._waiters = [(c, w) for c, w in self._waiters if w is not d]
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{self.transcript()}")

        d.addTimeout(timeout, reactor)
        d.addErrback(timed_out)
        return d

    def line(self, pattern: str, timeout: float = TIMEOUT) -> defer.Deferred[re.Match[str]]:
        """Fires with the first match of ``pattern`` in stdout+stderr."""
        rx = re.compile(pattern)
        d = self.until(lambda: rx.search(self.out + self.err) is not None, repr(pattern), timeout)
        return d.addCallback(lambda _: rx.search(self.out + self.err))  # type: ignore[return-value]

    def exited(self, timeout: float = TIMEOUT) -> defer.Deferred[int | None]:
        """Fires with the exit code once the process has ended."""
        if self.ended.called:
            return defer.succeed(self.exit_code)
        d: defer.Deferred[None] = defer.Deferred()
        self.ended.addCallback(lambda _: d.called or d.callback(None))

        def timed_out(f: Failure) -> Failure:
            f.trap(defer.TimeoutError)
            raise AssertionError(f"timed out after {timeout:g}s waiting for the exit\n{self.transcript()}")

        d.addTimeout(timeout, reactor).addErrback(timed_out)
        return d.addCallback(lambda _: self.exit_code)  # type: ignore[return-value]

    def signal_process(self, name: str) -> None:
        if not self.ended.called and self.transport is not None:
            self.transport.signalProcess(name)  # type: ignore[attr-defined]


def spawn(test: Any, argv: Sequence[str], *, path: str | None = None, env: dict[str, str] | None = None) -> Command:
    """Start ``argv`` (argv[0]: a console script name or a path); killed at cleanup."""
    argv = list(argv)
    exe = argv[0] if os.path.isabs(argv[0]) else script(argv[0])
    cmd = Command([exe, *argv[1:]])
    reactor.spawnProcess(cmd, exe, [exe, *argv[1:]], env=env or child_env(), path=path)  # type: ignore[attr-defined]

    def kill() -> defer.Deferred[None] | None:
        if cmd.ended.called:
            return None
        cmd.signal_process("KILL")
        return cmd.ended

    test.addCleanup(kill)
    return cmd


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Bounded wait for a condition outside any child's output."""
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False
