"""The ``ganeti-maintd`` / ``ganeti-maintd-agent`` commands (maintd.admin.launcher).

Unit level: the command line (Ganeti's daemon conventions) and the twistd
argument list built from it.  End to end: the installed console script run
as a real process, in the foreground and daemonised, with text and JSON logs,
its exit statuses (11, 12 from the master vote, 2 for usage errors).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

import maintd
from maintd.admin.launcher import (
    AGENT,
    MAINTD,
    find_plugin,
    launcher_options,
    plugin_argv,
    twistd_argv,
)
from maintd.cluster.voting import EXIT_NODESETUP_ERROR, EXIT_NOTMASTER
from maintd.daemon.tap import Options

from .commands import TIMEOUT, free_port, pid_alive, spawn, wait_until


def parse(*argv: str, daemon: Any = MAINTD) -> usage.Options:
    opts = launcher_options(daemon, Options)()
    opts.parseOptions(list(argv))
    return opts


class CommandLineTests(SynchronousTestCase):
    def test_daemonises_by_default_with_ganeti_paths(self) -> None:
        opts = parse("--no-voting", "--yes-do-it")
        args = twistd_argv(MAINTD, opts, ["--no-voting", "--yes-do-it"])
        self.assertEqual(args[:3], ["--pidfile=/var/run/ganeti/ganeti-maintd.pid",
                                    "--logfile=/var/log/ganeti/maintd.log", "ganeti-maintd"])
        self.assertNotIn("--nodaemon", args)
        self.assertEqual(args[3:], ["--no-voting", "--yes-do-it"])

    def test_agent_paths(self) -> None:
        # the launcher is generic: the agent's command differs only in names
        opts = parse()
        args = twistd_argv(AGENT, opts, [])
        self.assertEqual(args, ["--pidfile=/var/run/ganeti/ganeti-maintd-agent.pid",
                                "--logfile=/var/log/ganeti/maintd-agent.log", "ganeti-maintd-agent"])

    def test_foreground_no_pidfile_log_to_stdout(self) -> None:
        argv = ["-f", "-d", "-p", "1900", "-b", "::1"]
        args = twistd_argv(MAINTD, parse(*argv), argv)
        self.assertEqual(args, ["--nodaemon", "--pidfile=", "ganeti-maintd",
                                "--debug", "--port=1900", "--bind=::1"])

    def test_syslog(self) -> None:
        for argv in (["--syslog"], ["-f", "--syslog"]):
            args = twistd_argv(MAINTD, parse(*argv), argv)
            self.assertIn("--syslog", args)
            self.assertIn("--prefix=ganeti-maintd", args)
            self.assertFalse([a for a in args if a.startswith("--logfile")], args)
            self.assertEqual(args[-1], "ganeti-maintd", "not passed to the plugin")

    def test_launcher_options_are_not_passed_to_the_plugin(self) -> None:
        argv = ["-fd", "--pidfile", "/x/p", "--logfile=/x/l", "--rapi-u", "maintd",
                "--rapi-password-file", "/pw"]
        opts = parse(*argv)
        self.assertTrue(opts["foreground"])
        self.assertEqual(plugin_argv(opts, argv),
                         ["--debug", "--rapi-user=maintd", "--rapi-password-file=/pw"])
        self.assertEqual(twistd_argv(MAINTD, opts, argv)[:3],
                         ["--nodaemon", "--pidfile=/x/p", "--logfile=/x/l"])

    def test_every_plugin_option_is_accepted(self) -> None:
        opts = parse("--round-delay", "7", "--dry-run", "--log-format", "json")
        self.assertEqual(opts.daemon_config.round_delay, 7.0)
        self.assertTrue(opts.daemon_config.dry_run)
        self.assertEqual(opts.daemon_config.log_format, "json")

    def test_the_plugin_does_not_see_launcher_options_as_settings(self) -> None:
        opts = parse("-f", "--pidfile", "/x/p")
        self.assertFalse(hasattr(opts.daemon_config, "foreground"))


class CommandTests(TestCase):
    """The installed console script, as a real process."""

    timeout = 180

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def get(self, path: str) -> Any:
        response = await treq.get(f"http://127.0.0.1:{self.port}{path}", timeout=10, pool=self.pool)
        self.assertEqual(response.code, 200, path)
        return json.loads(await response.content())

    def offline_args(self, *extra: str) -> list[str]:
        """A daemon whose RAPI is unreachable (rounds fail, the API serves)."""
        key = os.path.join(self.dir, "hmac.key")  # the cluster's, for the node agents
        with open(key, "w") as f:
            f.write("0" * 40 + "\n")
        return ["-p", str(self.port), "-b", "127.0.0.1", "--state-dir",
                os.path.join(self.dir, "state"), "--rapi", "http://127.0.0.1:1",
                "--hmac-key", key, "--agent-plain-http", *extra]

    def test_version_and_help(self) -> defer.Deferred[None]:
        async def run() -> None:
            version = spawn(self, ["ganeti-maintd", "--version"])
            self.assertEqual(await version.exited(), 0)
            self.assertEqual(version.out, f"ganeti-maintd {maintd.__version__}\n")
            helped = spawn(self, ["ganeti-maintd", "--help"])
            self.assertEqual(await helped.exited(), 0)
            self.assertTrue(helped.out.startswith("Usage: ganeti-maintd [-f]"), helped.out)
            for option in ("--foreground", "--pidfile", "--logfile", "--debug", "--port",
                           "--bind", "--no-voting", "--yes-do-it", "--log-format", "--simulate"):
                self.assertIn(option, helped.out)

        return defer.Deferred.fromCoroutine(run())

    def test_foreground_simulate_serves_and_stops_on_sigterm(self) -> defer.Deferred[None]:
        async def run() -> None:
            cmd = spawn(self, ["ganeti-maintd", "-f", "--simulate", "-p", str(self.port),
                               "--state-dir", os.path.join(self.dir, "state")], path=self.dir)
            await cmd.line(r"round 1 done")
            self.assertEqual(await self.get("/"), [1])
            # the newcomer is told where to look, the password included
            m = await cmd.line(r"simulated cluster: RAPI (https://127\.0\.0\.1:\d+) user maintd "
                               r"password (\S+) ")
            self.assertGreater(len(m.group(2)), 10)
            self.assertIn(f"status page http://127.0.0.1:{self.port}/ui", cmd.out)
            self.assertIn("rounds every 5s", cmd.out)
            cmd.signal_process("TERM")
            await cmd.exited()
            self.assertIn(cmd.exit_code, (0, None), cmd.transcript())
            self.assertIn("Server Shut Down.", cmd.out)
            self.assertFalse(os.path.exists(os.path.join(self.dir, "twistd.pid")))

        return defer.Deferred.fromCoroutine(run())

    def test_demo_shows_a_whole_evacuation_within_two_minutes(self) -> defer.Deferred[None]:
        # `make demo` runs `ganeti-maintd -f --simulate` with its defaults
        async def run() -> None:
            started = reactor.seconds()
            cmd = spawn(self, ["ganeti-maintd", "-f", "--simulate", "-p", str(self.port)],
                        path=self.dir)
            await cmd.line(r"incident \S+ on node4\.sim\.test: ", timeout=60)
            m = await cmd.line(r"incident (\S+) on node4\.sim\.test completed, tag "
                               r"maintd:repairready:", timeout=120 - (reactor.seconds() - started))
            took = reactor.seconds() - started
            [inc] = await self.get("/1/status")
            self.assertEqual((inc["uuid"], inc["repair-status"]), (m.group(1), "completed"))
            self.assertLess(took, 120)
            cmd.signal_process("TERM")
            await cmd.exited()

        return defer.Deferred.fromCoroutine(run())

    def test_daemonised_pidfile_logfile_sigterm(self) -> defer.Deferred[None]:
        async def run() -> None:
            pidfile = os.path.join(self.dir, "run", "ganeti-maintd.pid")  # dirs made on demand
            logfile = os.path.join(self.dir, "log", "maintd.log")
            cmd = spawn(self, ["ganeti-maintd", "--pidfile", pidfile, "--logfile", logfile,
                               *self.offline_args("--no-voting", "--yes-do-it")], path=self.dir)
            # the command returns once the daemon child has started its services
            self.assertEqual(await cmd.exited(), 0, cmd.transcript())
            pid = int(open(pidfile).read())
            self.addCleanup(lambda: pid_alive(pid) and os.kill(pid, signal.SIGKILL))
            self.assertNotEqual(pid, cmd.transport.pid)  # type: ignore[union-attr]
            self.assertEqual(await self.get("/"), [1])
            self.assertIn("master vote skipped", open(logfile).read())
            os.kill(pid, signal.SIGTERM)
            await wait_until(lambda: not pid_alive(pid), "the daemon's exit")
            self.assertFalse(os.path.exists(pidfile))
            self.assertIn("Server Shut Down.", open(logfile).read())

        return defer.Deferred.fromCoroutine(run())

    def test_json_log_daemonised(self) -> defer.Deferred[None]:
        async def run() -> None:
            pidfile = os.path.join(self.dir, "maintd.pid")
            logfile = os.path.join(self.dir, "maintd.log")
            cmd = spawn(self, ["ganeti-maintd", "--pidfile", pidfile, "--logfile", logfile,
                               "--log-format", "json",
                               *self.offline_args("--no-voting", "--yes-do-it")], path=self.dir)
            self.assertEqual(await cmd.exited(), 0, cmd.transcript())
            pid = int(open(pidfile).read())
            self.addCleanup(lambda: pid_alive(pid) and os.kill(pid, signal.SIGKILL))
            await wait_until(lambda: "round 1 failed" in open(logfile).read(), "round 1 in the log")
            os.kill(pid, signal.SIGTERM)
            await wait_until(lambda: not pid_alive(pid), "the daemon's exit")
            records = [json.loads(line) for line in open(logfile).read().splitlines()]
            self.assertGreater(len(records), 4)
            for r in records:
                self.assertLessEqual({"time", "level", "namespace", "text"}, set(r), r)
                self.assertRegex(r["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
            failed = [r for r in records if r.get("format", "").startswith("round {number} failed")]
            self.assertEqual(len(failed), 1, records)
            self.assertEqual(failed[0]["level"], "error")
            self.assertEqual(failed[0]["namespace"], "maintd.daemon.scheduler")
            self.assertEqual(failed[0]["number"], 1)
            self.assertIn("127.0.0.1:1", failed[0]["error"])
            self.assertTrue(failed[0]["text"].startswith("round 1 failed after"))
            self.assertTrue(any(r["text"] == "Server Shut Down." for r in records))

        return defer.Deferred.fromCoroutine(run())

    def test_json_log_foreground_on_stdout(self) -> defer.Deferred[None]:
        async def run() -> None:
            cmd = spawn(self, ["ganeti-maintd", "-f", "--log-format=json",
                               *self.offline_args("--no-voting", "--yes-do-it")], path=self.dir)
            await cmd.line(r'"format": "round \{number\} failed')
            cmd.signal_process("TERM")
            await cmd.exited()
            lines = cmd.out.splitlines()
            self.assertTrue(lines)
            for line in lines:
                record = json.loads(line)
                self.assertIn(record["level"], ("debug", "info", "warn", "error", "critical"))
            self.assertTrue(any(json.loads(line).get("port") == self.port for line in lines))

        return defer.Deferred.fromCoroutine(run())

    def test_text_log_is_the_default(self) -> defer.Deferred[None]:
        async def run() -> None:
            cmd = spawn(self, ["ganeti-maintd", "-f",
                               *self.offline_args("--no-voting", "--yes-do-it")], path=self.dir)
            await cmd.line(r"round 1 failed")
            cmd.signal_process("TERM")
            await cmd.exited()
            self.assertRegex(cmd.out, r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[")
            self.assertNotIn('{"time"', cmd.out)

        return defer.Deferred.fromCoroutine(run())

    def test_plain_twistd_refuses_json_log_in_one_line(self) -> defer.Deferred[None]:
        async def run() -> None:
            cmd = spawn(self, ["twistd", "-n", "--pidfile=", "ganeti-maintd", "--log-format", "json",
                               *self.offline_args("--no-voting", "--yes-do-it")], path=self.dir)
            self.assertNotEqual(await cmd.exited(), 0)
            self.assertIn("--log-format json needs the ganeti-maintd command", cmd.err)

        return defer.Deferred.fromCoroutine(run())

    def test_setup_error_exit_12_daemonised_no_pidfile(self) -> defer.Deferred[None]:
        async def run() -> None:
            ssconf = os.path.join(self.dir, "ssconf")
            os.makedirs(ssconf)
            pidfile = os.path.join(self.dir, "maintd.pid")
            cmd = spawn(self, ["ganeti-maintd", "--pidfile", pidfile, "--logfile",
                               os.path.join(self.dir, "log"), *self.offline_args("--ssconf-dir", ssconf)])
            self.assertEqual(await cmd.exited(), EXIT_NODESETUP_ERROR, cmd.transcript())
            self.assertIn("refusing to start", cmd.err)
            self.assertFalse(os.path.exists(pidfile))

        return defer.Deferred.fromCoroutine(run())

    def test_vote_lost_exit_11_in_the_foreground(self) -> defer.Deferred[None]:
        from .test_voting_fakes import Certs, start_nodes, write_ssconf

        async def run() -> None:
            certs = Certs(self.dir)
            nodes = start_nodes(3, certs.cluster.path, certs.cluster.path)
            for n in nodes:
                self.addCleanup(n.stop)
                n.vote_for("node2.example.com")
            ssconf = os.path.join(self.dir, "ssconf")
            os.makedirs(ssconf)
            names = ["node1.example.com", "node2.example.com", "node3.example.com"]
            write_ssconf(ssconf, {name: n.host for name, n in zip(names, nodes, strict=True)},
                         "node1.example.com")
            cmd = spawn(self, ["ganeti-maintd", "-f", *self.offline_args(
                "--ssconf-dir", ssconf, "--noded-cert", certs.cluster.path,
                "--noded-port", str(nodes[0].port), "--hostname", "node1.example.com")])
            self.assertEqual(await cmd.exited(TIMEOUT), EXIT_NOTMASTER, cmd.transcript())
            self.assertIn("0 of 3 nodes voted for node1.example.com", cmd.err)

        return defer.Deferred.fromCoroutine(run())


class AgentCommandTests(TestCase):
    """``ganeti-maintd-agent`` runs the agent's plugin the same way."""

    timeout = 120

    def setUp(self) -> None:
        if find_plugin(AGENT.plugin) is None:
            raise SkipTest(f"the twistd plugin {AGENT.plugin} (branch agent) is not installed "
                           f"here: only the launcher's part is tested (CommandLineTests.test_agent_paths)")

    def test_daemonised_serves_and_stops(self) -> defer.Deferred[None]:
        from twisted.web.client import Agent

        from maintd.cluster.rapi.tls import PinnedCertificatePolicy

        from .test_agent_tap import argv, files

        async def run() -> None:
            if os.geteuid() != 0:
                raise SkipTest("the agent's whitelist directories must be owned by root")
            f = files(self)
            port = free_port()
            pidfile = os.path.join(f["dir"], "run", "agent.pid")
            logfile = os.path.join(f["dir"], "agent.log")
            cmd = spawn(self, ["ganeti-maintd-agent", "--pidfile", pidfile, "--logfile", logfile,
                               "-p", str(port), *argv(f)], path=f["dir"])
            self.assertEqual(await cmd.exited(), 0, cmd.transcript())
            pid = int(open(pidfile).read())
            self.addCleanup(lambda: pid_alive(pid) and os.kill(pid, signal.SIGKILL))
            policy = PinnedCertificatePolicy.from_file(f["cert"])
            client = treq.client.HTTPClient(Agent(reactor, contextFactory=policy,
                                                  pool=HTTPConnectionPool(reactor, False)))
            r = await client.get(f"https://127.0.0.1:{port}/1/list/collectors", timeout=10)
            self.assertEqual(r.code, 200)
            await r.content()
            os.kill(pid, signal.SIGTERM)
            await wait_until(lambda: not pid_alive(pid), "the agent's exit")
            self.assertFalse(os.path.exists(pidfile))
            self.assertIn("Server Shut Down.", open(logfile).read())

        return defer.Deferred.fromCoroutine(run())

    def test_version_and_help(self) -> defer.Deferred[None]:
        async def run() -> None:
            version = spawn(self, ["ganeti-maintd-agent", "--version"])
            self.assertEqual(await version.exited(), 0)
            self.assertEqual(version.out, f"ganeti-maintd-agent {maintd.__version__}\n")
            helped = spawn(self, ["ganeti-maintd-agent", "--help"])
            self.assertEqual(await helped.exited(), 0)
            self.assertTrue(helped.out.startswith("Usage: ganeti-maintd-agent [-f]"), helped.out)

        return defer.Deferred.fromCoroutine(run())

    def test_usage_error(self) -> defer.Deferred[None]:
        async def run() -> None:
            cmd = spawn(self, ["ganeti-maintd-agent", "--no-such-option"])
            self.assertEqual(await cmd.exited(), 2)
            self.assertEqual(cmd.out, "")
            self.assertEqual(cmd.err.count("\n"), 1, cmd.err)
            self.assertIn("see ganeti-maintd-agent --help", cmd.err)

        return defer.Deferred.fromCoroutine(run())

    def test_json_log_foreground_and_plain_twistd_refuses_it(self) -> defer.Deferred[None]:
        from .test_agent_tap import argv, files

        async def run() -> None:
            if os.geteuid() != 0:
                raise SkipTest("the agent's whitelist directories must be owned by root")
            f = files(self)
            port = free_port()
            cmd = spawn(self, ["ganeti-maintd-agent", "-f", "--log-format=json", "-p", str(port),
                               "--plain-http", *argv(f)], path=f["dir"])
            await cmd.line(r'"text": ".*[Ss]tarting')
            r = await treq.get(f"http://127.0.0.1:{port}/1/list/collectors", timeout=10,
                               persistent=False)
            self.assertEqual(r.code, 200)
            await r.content()
            cmd.signal_process("TERM")
            await cmd.exited()
            records = [json.loads(line) for line in cmd.out.splitlines()]
            self.assertTrue(records)
            for record in records:
                self.assertLessEqual({"time", "level", "namespace", "text"}, set(record), record)
            self.assertTrue(any(r["text"] == "Server Shut Down." for r in records), records)
            plain = spawn(self, ["twistd", "-n", "--pidfile=", "ganeti-maintd-agent",
                                 "--log-format", "json", *argv(f)], path=f["dir"])
            self.assertNotEqual(await plain.exited(), 0)
            self.assertIn("--log-format json needs the ganeti-maintd-agent command", plain.err)
            self.assertEqual(plain.err.strip().count("\n"), 0, plain.err)

        return defer.Deferred.fromCoroutine(run())
