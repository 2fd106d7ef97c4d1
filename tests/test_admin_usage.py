"""Issue 14 item 6: the rough edges a new user hits, tried with the installed commands.

* a usage error is one line on stderr, ``PROG: ... (see PROG --help)``,
  nothing on stdout, exit 2 — for every command and twistd plugin;
* ``twistd -n ganeti-sim`` writes no pid file unless asked, and removes its
  temporary directory when it stops.
"""

from __future__ import annotations

import os
import re

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from maintd.sim.tap import TWISTD_PIDFILE, _no_default_pidfile

from .commands import free_port, spawn

#: (command line, the "see ... --help" program name)
BAD_COMMAND_LINES = [
    (["ganeti-maintd", "--no-such-option"], "ganeti-maintd"),
    (["ganeti-maintd", "-p", "notaport"], "ganeti-maintd"),
    (["ganeti-maintd", "--no-voting"], "ganeti-maintd"),
    (["ganeti-maintd", "--log-format", "xml"], "ganeti-maintd"),
    (["twistd", "-n", "ganeti-maintd", "--no-such-option"], "twistd ganeti-maintd"),
    (["twistd", "-n", "ganeti-sim", "--no-such-option"], "twistd ganeti-sim"),
    (["twistd", "-n", "ganeti-sim", "--rapi-port", "x"], "twistd ganeti-sim"),
    (["ganeti-maintd-ctl", "frobnicate"], "ganeti-maintd-ctl"),
    (["ganeti-maintd-plan", "--no-such-option", "-t", "x"], "ganeti-maintd-plan"),
    (["ganeti-maintd-snapshot", "--no-such-option"], "ganeti-maintd-snapshot"),
]


class UsageErrorTests(TestCase):
    timeout = 120

    def test_one_line_on_stderr_exit_2(self) -> defer.Deferred[None]:
        async def run() -> None:
            cwd = os.path.abspath(self.mktemp())
            os.makedirs(cwd)
            for argv, prog in BAD_COMMAND_LINES:
                cmd = spawn(self, argv, path=cwd)
                code = await cmd.exited()
                self.assertEqual(code, 2, cmd.transcript())
                self.assertEqual(cmd.out, "", cmd.transcript())
                self.assertEqual(cmd.err.count("\n"), 1, cmd.transcript())
                self.assertRegex(cmd.err, rf"^{re.escape(prog)}: .+ \(see {re.escape(prog)} --help\)\n$")
                self.assertNotIn("Traceback", cmd.err)
            self.assertEqual(os.listdir(cwd), [], "no pid or log file left behind")

        return defer.Deferred.fromCoroutine(run())


class SimPidFileUnitTests(SynchronousTestCase):
    def test_foreground_default_pidfile_is_dropped(self) -> None:
        opts = {"nodaemon": True, "pidfile": TWISTD_PIDFILE}
        _no_default_pidfile(opts, ["-n", "ganeti-sim"])
        self.assertEqual(opts["pidfile"], "")

    def test_asked_for_or_daemonised_keeps_it(self) -> None:
        asked = {"nodaemon": True, "pidfile": TWISTD_PIDFILE}
        _no_default_pidfile(asked, ["-n", "--pidfile", "twistd.pid", "ganeti-sim"])
        self.assertEqual(asked["pidfile"], TWISTD_PIDFILE)
        daemon = {"nodaemon": False, "pidfile": TWISTD_PIDFILE}
        _no_default_pidfile(daemon, ["ganeti-sim"])
        self.assertEqual(daemon["pidfile"], TWISTD_PIDFILE)


async def serving(port: int) -> None:
    """Until the simulator answers HTTP: its reactor runs (and has its signal
    handlers: a SIGTERM now is a clean stop, not a kill)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await treq.get(f"http://127.0.0.1:{port}/version", pool=pool, timeout=30)
    await response.content()


class StandaloneSimulatorTests(TestCase):
    timeout = 120

    def start(self, cwd: str) -> defer.Deferred[tuple[str, object]]:
        async def run() -> tuple[str, object]:
            port = free_port()
            cmd = spawn(self, ["twistd", "-n", "ganeti-sim", "--plain-http",
                               "--rapi-port", str(port), "--mond-port", str(free_port()),
                               "--agent-port", str(free_port())],
                        path=cwd)
            m = await cmd.line(r"ganeti-sim password file: (\S+)/rapi-password\n")
            await serving(port)
            return m.group(1), cmd

        return defer.Deferred.fromCoroutine(run())

    def test_no_pidfile_and_no_temporary_directory_left(self) -> defer.Deferred[None]:
        async def run() -> None:
            cwd = os.path.abspath(self.mktemp())
            os.makedirs(cwd)
            workdir, cmd = await self.start(cwd)
            self.assertTrue(os.path.basename(workdir).startswith("ganeti-sim-"), workdir)
            self.assertTrue(os.path.isdir(workdir))
            self.assertEqual(os.listdir(cwd), [], "no twistd.pid in the working directory")
            # a second simulator in the same directory starts as well
            workdir2, cmd2 = await self.start(cwd)
            for c in (cmd, cmd2):
                c.signal_process("TERM")  # type: ignore[attr-defined]
                await c.exited()  # type: ignore[attr-defined]
                self.assertIn("Server Shut Down.", c.out)  # type: ignore[attr-defined]
            self.assertFalse(os.path.exists(workdir), "temporary directory removed")
            self.assertFalse(os.path.exists(workdir2))

        return defer.Deferred.fromCoroutine(run())

    def test_pidfile_when_asked(self) -> defer.Deferred[None]:
        async def run() -> None:
            cwd = os.path.abspath(self.mktemp())
            os.makedirs(cwd)
            pidfile = os.path.join(cwd, "sim.pid")
            port = free_port()
            sim = spawn(self, ["twistd", "-n", f"--pidfile={pidfile}", "ganeti-sim", "--plain-http",
                               "--rapi-port", str(port), "--mond-port", str(free_port()),
                               "--agent-port", str(free_port())],
                        path=cwd)
            await sim.line(r"ganeti-sim: cluster")
            await serving(port)
            self.assertEqual(int(open(pidfile).read()), sim.transport.pid)  # type: ignore[union-attr]
            sim.signal_process("TERM")
            await sim.exited()
            self.assertFalse(os.path.exists(pidfile), sim.transcript())

        return defer.Deferred.fromCoroutine(run())


class ReadmeSimulatorTests(TestCase):
    """The README's simulator + hbal example, as written (only the port differs)."""

    timeout = 120

    def test_hbal_example(self) -> defer.Deferred[None]:
        async def run() -> None:
            from .tools import find_tool

            hbal = find_tool("hbal")
            readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
            sim_line = re.search(r"(?m)^twistd -n ganeti-sim (--plain-http .*--rapi-port 5080) &$", readme)
            hbal_line = re.search(r"(?m)^hbal (-m http://127\.0\.0\.1:5080.*?) +#", readme)
            assert sim_line is not None and hbal_line is not None, "README example changed"
            port = str(free_port())
            cwd = os.path.abspath(self.mktemp())
            os.makedirs(cwd)
            sim_args = sim_line.group(1).replace("5080", port).split()
            sim = spawn(self, ["twistd", "-n", "ganeti-sim", *sim_args, "--mond-port", str(free_port()),
                               "--agent-port", str(free_port())],
                        path=cwd)
            await sim.line(r"ganeti-sim: cluster demo")
            await serving(int(port))
            cmd = spawn(self, [hbal, *hbal_line.group(1).replace("5080", port).split()], path=cwd)
            self.assertEqual(await cmd.exited(), 0, cmd.transcript())
            self.assertIn("Loaded 12 nodes, 36 instances", cmd.out + cmd.err)
            # why the README gives -G: the demo cluster has several groups
            bare = spawn(self, [hbal, "-m", f"http://127.0.0.1:{port}"], path=cwd)
            self.assertNotEqual(await bare.exited(), 0)
            self.assertIn("multiple node groups", bare.out + bare.err)
            sim.signal_process("TERM")
            await sim.exited()

        return defer.Deferred.fromCoroutine(run())
