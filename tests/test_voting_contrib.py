"""The shipped systemd unit and example config agree with the daemon."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys

from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from maintd.cluster.voting import EXIT_NODESETUP_ERROR, EXIT_NOTMASTER
from maintd.common.cli import EXIT_USAGE
from maintd.daemon.config import read_config_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
UNIT = os.path.join(ROOT, "contrib", "systemd", "ganeti-maintd.service")
EXAMPLE = os.path.join(ROOT, "contrib", "maintd.conf.example")


def unit() -> configparser.ConfigParser:
    p = configparser.ConfigParser(interpolation=None, strict=False)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(UNIT)
    return p


class ExampleConfigTests(SynchronousTestCase):
    def test_example_parses_as_shipped(self) -> None:
        values = read_config_file(EXAMPLE)
        self.assertEqual(values["rapi_user"], "maintd")
        self.assertEqual(values["rapi_password_file"], "/etc/ganeti/maintd-rapi.password")

    def test_every_documented_key_is_a_real_option(self) -> None:
        # uncomment every "# key = value" line: the file must still parse
        with open(EXAMPLE) as f:
            text = f.read()
        uncommented, count = re.subn(r"(?m)^# ([a-z][a-z-]*) = ", r"\1 = ", text)
        self.assertGreater(count, 15)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(uncommented)
        values = read_config_file(path)
        for key in ("ssconf_dir", "noded_cert", "noded_port", "master_check_interval", "rapi_cert", "port"):
            self.assertIn(key, values)
        self.assertEqual(values["noded_cert"], "/var/lib/ganeti/server.pem")


class UnitTests(SynchronousTestCase):
    def test_exec_start_is_a_valid_foreground_command_line(self) -> None:
        from maintd.admin.launcher import MAINTD, launcher_options, twistd_argv
        from maintd.daemon.tap import Options

        argv = shlex.split(unit()["Service"]["ExecStart"])
        self.assertEqual(os.path.basename(argv[0]), "ganeti-maintd")
        args = [a for a in argv[1:] if a != "$MAINTD_ARGS"]
        args[args.index("/etc/ganeti/maintd.conf")] = EXAMPLE
        launcher = launcher_options(MAINTD, Options)()
        launcher.parseOptions(args)
        self.assertTrue(launcher["foreground"])
        # what the command hands to twistd
        opts = ServerOptions()
        opts.parseOptions(twistd_argv(MAINTD, launcher, args))
        self.assertTrue(opts["nodaemon"], "systemd supervises a foreground daemon")
        self.assertEqual(opts["pidfile"], "")
        self.assertEqual(opts.subCommand, "ganeti-maintd")
        self.assertEqual(opts.subOptions.daemon_config.rapi_user, "maintd")

    def test_exit_statuses(self) -> None:
        service = unit()["Service"]
        self.assertEqual(service["Type"], "simple")
        self.assertIn(str(EXIT_NOTMASTER), service["SuccessExitStatus"].split())
        prevent = service["RestartPreventExitStatus"].split()
        self.assertIn(str(EXIT_NOTMASTER), prevent)
        self.assertIn(str(EXIT_NODESETUP_ERROR), prevent)
        self.assertIn(str(EXIT_USAGE), prevent)
        self.assertEqual(service["Restart"], "on-failure")

    def test_follows_the_master_role(self) -> None:
        u = unit()
        self.assertEqual(u["Unit"]["PartOf"], "ganeti-master.target")
        self.assertEqual(u["Install"]["WantedBy"], "ganeti-master.target")

    def test_systemd_analyze_verify(self) -> None:
        tool = shutil.which("systemd-analyze")
        if tool is None:
            raise SkipTest("systemd-analyze not installed")
        command = os.path.join(os.path.dirname(sys.executable), "ganeti-maintd")
        with open(UNIT) as f:
            text = f.read().replace("/usr/bin/ganeti-maintd", command)
        d = self.mktemp()
        os.makedirs(d)
        path = os.path.join(d, "ganeti-maintd.service")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([tool, "verify", "--man=no", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stderr.strip(), "", r.stderr)
