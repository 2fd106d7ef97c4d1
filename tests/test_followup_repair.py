"""--repair-command: option, startup validation, and live repairs end to end.

The end-to-end tests run the daemon (makeService) against the embedded
simulator on 127.0.0.0/8 with a shell script as the repair program.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.cluster.executor import (
    AgentExecutor,
    CommandExecutor,
    ExecutorConfigError,
    check_program,
)
from maintd.daemon.config import DaemonConfig
from maintd.daemon.options import Options
from maintd.daemon.state import TAG_FAILED, TAG_READY, RepairStatus
from maintd.daemon.tap import makeService, repair_executor
from tests.simulators import agent_config
from tests.test_round_e2e import Daemon, scenario

#: Records its arguments and stdin next to itself; succeeds only for fix-disk.
SCRIPT = """#!/bin/sh
here=$(dirname "$0")
cat > "$here/stdin.$1.$2"
echo "$1 $2" >> "$here/calls"
[ "$2" = fix-disk ]
"""


def write_program(directory: str, text: str = SCRIPT, mode: int = 0o755) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "repair")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class CheckProgramTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.path = write_program(self.dir)

    def assertRefused(self, path: str, needle: str, **kw: Any) -> None:
        with self.assertRaises(ExecutorConfigError) as cm:
            check_program(path, **kw)
        self.assertIn(needle, str(cm.exception))
        self.assertIn(path, str(cm.exception))

    def test_good_program(self) -> None:
        check_program(self.path)  # does not raise

    def test_relative_missing_directory_not_executable(self) -> None:
        self.assertRefused("repair", "absolute path")
        self.assertRefused(os.path.join(self.dir, "nope"), "No such file")
        self.assertRefused(self.dir, "not a regular file")
        os.chmod(self.path, 0o644)
        self.assertRefused(self.path, "not executable")

    def test_group_or_other_writable(self) -> None:
        for mode in (0o775, 0o757):
            os.chmod(self.path, mode)
            self.assertRefused(self.path, "writable by group or others")

    def test_foreign_owner(self) -> None:
        if os.geteuid() == 0:
            os.chown(self.path, 65534, 65534)
            self.assertRefused(self.path, "owned by uid 65534")
        else:
            self.assertRefused(self.path, f"owned by uid {os.geteuid()}", uid=os.geteuid() + 1)


class OptionTests(SynchronousTestCase):
    def test_parsed_into_config(self) -> None:
        o = Options()
        o.parseOptions(["--repair-command", "/usr/local/sbin/repair", "--repair-timeout", "30"])
        self.assertEqual(
            (o.daemon_config.repair_command, o.daemon_config.repair_timeout),
            ("/usr/local/sbin/repair", 30.0),
        )
        o = Options()
        o.parseOptions([])
        self.assertEqual((o.daemon_config.repair_command, o.daemon_config.repair_timeout),
                         (None, 600.0))

    def test_executor_from_config(self) -> None:
        d = os.path.abspath(self.mktemp())
        path = write_program(d)
        config = DaemonConfig.for_tests(state_dir=d)
        self.assertIsInstance(repair_executor(config, reactor), AgentExecutor,
                              "the node agents by default")
        ex = repair_executor(DaemonConfig.for_tests(state_dir=d, repair_command=path,
                                                    repair_timeout=7), reactor)
        assert isinstance(ex, CommandExecutor)
        self.assertEqual((ex.argv, ex.timeout), ([path], 7))

    def test_bad_program_is_a_startup_error(self) -> None:
        d = os.path.abspath(self.mktemp())
        path = write_program(d, mode=0o777)
        config = DaemonConfig.for_tests(state_dir=os.path.join(d, "state"), repair_command=path)
        with self.assertRaises(SystemExit) as cm:
            makeService(config, reactor)
        self.assertIn(f"repair command {path} is writable by group or others", str(cm.exception))
        self.assertFalse(os.path.exists(os.path.join(d, "state")), "nothing started")


class RepairDaemon(Daemon):
    """The e2e test daemon, with ``--repair-command``."""

    def __init__(self, test: TestCase, spec: dict[str, Any], program: str) -> None:
        super().__init__(test, spec)
        self.program = program

    async def start(self) -> None:
        s = self.sim
        config = DaemonConfig.for_tests(
            state_dir=self.state_dir, port=self.http_port, rapi=s.rapi_url, rapi_user=s.rapi_user,
            rapi_password_file=s.rapi_password_file, rapi_cert=s.rapi_cert, rapi_insecure=False,
            mond_port=s.mond_port, mond_timeout=1.0, round_delay=3600.0, busy_round_delay=3600.0,
            job_wait=10.0,
            repair_command=self.program, repair_timeout=60.0, **agent_config(s),
        )
        self.daemon = makeService(config, reactor)
        self.daemon.store.add_listener(self._record)
        self.daemon.startService()
        for _ in range(400):
            if self.daemon.rounds.rounds >= 1 and not self.daemon.rounds.running_round:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.number = self.daemon.rounds.rounds


class LiveRepairEndToEndTests(TestCase):
    timeout = 120

    async def daemon(self, report: dict[str, Any]) -> tuple[RepairDaemon, str]:
        d = RepairDaemon(self, scenario([], {"n3": report}), "")
        d.program = write_program(os.path.join(d.base, "bin"))
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
        await d.start()
        return d, os.path.dirname(d.program)

    def test_repair_succeeds(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._succeeds())

    async def _succeeds(self) -> None:
        report = {"status": "live-repair", "command": "fix-disk", "details": ["sdb"]}
        d, bindir = await self.daemon(report)
        [inc] = d.incidents("n3")
        self.assertEqual((inc.status, inc.reason), (RepairStatus.COMPLETED, ""))
        with open(os.path.join(bindir, "calls")) as f:
            self.assertEqual(f.read(), "n3 fix-disk\n", "run once, as PROGRAM NODE COMMAND")
        with open(os.path.join(bindir, "stdin.n3.fix-disk")) as f:
            self.assertEqual(json.load(f), report, "the report on stdin")
        await d.wait_jobs_done()
        self.assertIn(TAG_READY + inc.uuid, d.node("n3").tags)
        self.assertEqual(d.statuses[inc.uuid][-1], "completed")
        await d.round()
        with open(os.path.join(bindir, "calls")) as f:
            self.assertEqual(f.read(), "n3 fix-disk\n", "a completed repair is not run again")

    def test_repair_fails(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._fails())

    async def _fails(self) -> None:
        report = {"status": "live-repair", "command": "reboot-bmc", "details": []}
        d, bindir = await self.daemon(report)
        [inc] = d.incidents("n3")
        self.assertEqual(inc.status, RepairStatus.FAILED)
        self.assertIn("reboot-bmc on n3 exited with 1", inc.reason)
        await d.wait_jobs_done()
        self.assertIn(TAG_FAILED + inc.uuid, d.node("n3").tags)
        self.assertNotIn(TAG_READY + inc.uuid, d.node("n3").tags)
