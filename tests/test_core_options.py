"""The daemon's command line and config file (maintd.daemon.options, maintd.daemon.config)."""

from __future__ import annotations

import os
import socket
from unittest import mock

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from maintd.daemon import config as cfg
from maintd.daemon.config import DaemonConfig
from maintd.daemon.options import Options


def parse(*argv: str) -> Options:
    opts = Options()
    opts.parseOptions(list(argv))
    return opts


class DefaultsTests(SynchronousTestCase):
    def test_defaults_match_the_documented_ones(self) -> None:
        with mock.patch.object(socket, "getservbyname", side_effect=OSError("no such service")):
            c = parse().daemon_config
        self.assertEqual(c.port, 1816)
        self.assertEqual(c.bind, "0.0.0.0")
        self.assertEqual(c.rapi, "https://127.0.0.1:5080")
        self.assertEqual(c.rapi_cert, "/var/lib/ganeti/rapi.pem")
        self.assertEqual(c.rapi_timeout, 30.0)
        self.assertEqual(c.state_dir, "/var/lib/ganeti-maintd")
        self.assertEqual(c.round_delay, 300.0)
        self.assertEqual(c.mond_port, 1815)
        self.assertEqual(c.mond_path, "/1/report/node/diagnose")
        self.assertEqual(c.mond_parallel, 1024)
        self.assertEqual(c.job_wait, 60.0)
        self.assertIsNone(c.balance)
        self.assertIsNone(c.balance_threshold)
        self.assertEqual(c.ctl_socket, "/var/lib/ganeti-maintd/ctl.sock")
        self.assertEqual(c.noded_port, 1811)
        self.assertEqual(c.master_check_interval, 60.0)
        self.assertFalse(c.debug or c.no_voting or c.simulate or c.dry_run or c.rapi_insecure)
        self.assertTrue(c.hostname)

    def test_port_default_comes_from_the_services_database(self) -> None:
        with mock.patch.object(socket, "getservbyname", return_value=2816) as getserv:
            c = parse().daemon_config
        getserv.assert_called_with("ganeti-maintd", "tcp")
        self.assertEqual(c.port, 2816)

    def test_explicit_port_beats_the_services_database(self) -> None:
        with mock.patch.object(socket, "getservbyname", return_value=2816):
            self.assertEqual(parse("-p", "9000").daemon_config.port, 9000)

    def test_every_architecture_option_is_a_config_field(self) -> None:
        fields = {a.name for a in DaemonConfig.__attrs_attrs__}
        names = {o[0].replace("-", "_") for o in Options.optParameters + Options.optFlags}
        names.discard("no_balance")  # the False side of the tri-state balance
        self.assertEqual(names, fields)

    def test_every_option_has_help_text(self) -> None:
        for o in Options.optParameters:
            self.assertTrue(o[3], o[0])
        for o in Options.optFlags:
            self.assertTrue(o[2], o[0])


class ParsingTests(SynchronousTestCase):
    def test_values_are_parsed(self) -> None:
        c = parse(
            "-d",
            "-p",
            "1900",
            "-b",
            "127.0.0.2",
            "--rapi",
            "https://master.example.com:5080/",
            "--round-delay",
            "12.5",
            "--state-dir",
            "/srv/m",
            "--mond-parallel",
            "3",
            "--dry-run",
            "--no-balance",
            "--balance-threshold",
            "0.25",
        ).daemon_config
        self.assertTrue(c.debug)
        self.assertEqual(c.port, 1900)
        self.assertEqual(c.bind, "127.0.0.2")
        self.assertEqual(c.rapi, "https://master.example.com:5080")
        self.assertEqual(c.round_delay, 12.5)
        self.assertEqual(c.state_dir, "/srv/m")
        self.assertEqual(c.ctl_socket, "/srv/m/ctl.sock")
        self.assertEqual(c.mond_parallel, 3)
        self.assertTrue(c.dry_run)
        self.assertIs(c.balance, False)
        self.assertEqual(c.balance_threshold, 0.25)

    def test_iallocator(self) -> None:
        self.assertIsNone(parse().daemon_config.iallocator)
        self.assertEqual(parse("--iallocator", "hail").daemon_config.iallocator, "hail")
        for bad in ("/usr/lib/ganeti/iallocators/hail", "a b"):
            e = self.assertRaises(usage.UsageError, parse, "--iallocator", bad)
            self.assertIn(f"bad iallocator name {bad!r}", str(e))
        self.assertRaises(usage.UsageError, parse, "--iallocator", "")

    def test_balance_flag(self) -> None:
        self.assertIs(parse("--balance").daemon_config.balance, True)

    def test_ipv6_bind_is_accepted(self) -> None:
        self.assertEqual(parse("-b", "::1").daemon_config.bind, "::1")
        self.assertEqual(parse("-b", "[fe80::1]").daemon_config.bind, "fe80::1")

    def test_no_voting_without_yes_do_it_is_a_usage_error(self) -> None:
        e = self.assertRaises(usage.UsageError, parse, "--no-voting")
        self.assertIn("--yes-do-it", str(e))

    def test_no_voting_with_yes_do_it(self) -> None:
        c = parse("--no-voting", "--yes-do-it").daemon_config
        self.assertTrue(c.no_voting and c.yes_do_it)

    def test_bad_values_are_usage_errors(self) -> None:
        for argv in (
            ["-p", "http"],
            ["-p", "70000"],
            ["-b", "example.com"],
            ["--round-delay", "-1"],
            ["--round-delay", "soon"],
            ["--rapi", "ftp://x"],
            ["--mond-parallel", "0"],
            ["--balance", "--no-balance"],
        ):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_the_usage_error_names_the_bad_value(self) -> None:
        e = self.assertRaises(usage.UsageError, parse, "-b", "nowhere")
        self.assertIn("nowhere", str(e))


class ConfigFileTests(SynchronousTestCase):
    def write(self, name: str, text: str) -> str:
        d = self.mktemp()
        os.makedirs(d)
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_ini_file(self) -> None:
        path = self.write(
            "maintd.conf",
            "[maintd]\nround-delay = 60\nrapi_user = maint\ndry-run = yes\nno-balance = true\n",
        )
        opts = parse("--config", path)
        c = opts.daemon_config
        self.assertEqual(c.round_delay, 60.0)
        self.assertEqual(c.rapi_user, "maint")
        self.assertTrue(c.dry_run)
        self.assertIs(c.balance, False)
        self.assertEqual(c.config, path)
        self.assertIn("round_delay", opts.given)

    def test_toml_file_top_level_or_maintd_table(self) -> None:
        for text in (
            'round-delay = 42\nstate-dir = "/srv/x"\n',
            '[maintd]\nround-delay = 42\nstate-dir = "/srv/x"\n',
        ):
            c = parse("--config", self.write("m.toml", text)).daemon_config
            self.assertEqual(c.round_delay, 42.0)
            self.assertEqual(c.state_dir, "/srv/x")
            self.assertEqual(c.ctl_socket, "/srv/x/ctl.sock")

    def test_command_line_wins(self) -> None:
        path = self.write("m.toml", "round-delay = 42\nport = 1000\n")
        c = parse("--config", path, "--round-delay", "7").daemon_config
        self.assertEqual(c.round_delay, 7.0)
        self.assertEqual(c.port, 1000)

    def test_no_voting_in_file_still_needs_yes_do_it(self) -> None:
        path = self.write("m.toml", "no-voting = true\n")
        self.assertRaises(usage.UsageError, parse, "--config", path)
        c = parse("--config", path, "--yes-do-it").daemon_config
        self.assertTrue(c.no_voting)

    def test_file_errors_name_the_file(self) -> None:
        cases = {
            "bad.toml": "round-delay = \n",
            "unknown.toml": "colour = 'red'\n",
            "badvalue.toml": "port = 'http'\n",
            "nosection.conf": "[other]\nport = 1\n",
            "broken.conf": "port = 1\n",
        }
        for name, text in cases.items():
            path = self.write(name, text)
            e = self.assertRaises(usage.UsageError, parse, "--config", path)
            self.assertIn(path, str(e))
        missing = os.path.join(self.mktemp(), "missing.toml")
        e = self.assertRaises(usage.UsageError, parse, "--config", missing)
        self.assertIn(missing, str(e))


class DaemonConfigTests(SynchronousTestCase):
    def test_for_tests_needs_a_state_dir_and_is_safe(self) -> None:
        self.assertRaises(TypeError, DaemonConfig.for_tests)
        c = DaemonConfig.for_tests(state_dir="/tmp/x", round_delay=5)
        self.assertEqual(c.bind, "127.0.0.1")
        self.assertEqual(c.port, 0)
        self.assertTrue(c.no_voting)
        self.assertEqual(c.round_delay, 5)
        self.assertEqual(c.ctl_socket, "/tmp/x/ctl.sock")
        self.assertTrue(c.rapi.startswith("http://127.0.0.1"))

    def test_with_state_dir_moves_the_default_ctl_socket_only(self) -> None:
        c = DaemonConfig.for_tests(state_dir="/a").with_state_dir("/b")
        self.assertEqual((c.state_dir, c.ctl_socket), ("/b", "/b/ctl.sock"))
        c = DaemonConfig.for_tests(state_dir="/a", ctl_socket="/run/m.sock").with_state_dir("/b")
        self.assertEqual(c.ctl_socket, "/run/m.sock")

    def test_fallback_port_when_no_services_entry(self) -> None:
        with mock.patch.object(socket, "getservbyname", side_effect=OSError):
            self.assertEqual(cfg.default_port(), cfg.FALLBACK_PORT)
