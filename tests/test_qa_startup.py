"""Startup errors found by QA: one line ending in "; not starting", never a traceback.

makeService turns a configuration error into ``SystemExit(message)``; twistd
prints the message alone and exits 1.  These tests call makeService the way
twistd does (options parsed from a command line) with a fake reactor.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from maintd.daemon import tap
from maintd.daemon.options import Options


class StartupErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.state_dir = os.path.join(self.dir, "state")

    def start(self, *argv: str) -> str:
        """makeService for ``argv``; the one-line message it exits with."""
        options = Options()
        options.parseOptions(
            ["--no-voting", "--yes-do-it", "--state-dir", self.state_dir, "--port", "0", *argv]
        )
        e = self.assertRaises(SystemExit, tap.makeService, options, MemoryReactorClock())
        message = str(e)
        self.assertTrue(message.startswith("ganeti-maintd: "), message)
        self.assertTrue(message.endswith("; not starting"), message)
        self.assertNotIn("\n", message)
        return message

    def password_file(self, mode: int) -> str:
        path = os.path.join(self.dir, "rapi-password")
        with open(path, "w") as f:
            f.write("secret\n")
        os.chmod(path, mode)
        return path

    def test_missing_password_file(self) -> None:
        missing = os.path.join(self.dir, "nonexistent")
        message = self.start("--rapi-user", "maintd", "--rapi-password-file", missing)
        self.assertIn(f"cannot read RAPI password file {missing}", message)

    def test_password_file_readable_by_others(self) -> None:
        path = self.password_file(0o644)
        message = self.start("--rapi-user", "maintd", "--rapi-password-file", path)
        self.assertIn(path, message)
        self.assertIn("0644", message)

    def test_missing_certificate(self) -> None:
        missing = os.path.join(self.dir, "no-cert.pem")
        message = self.start("--rapi", "https://127.0.0.1:5080", "--rapi-cert", missing)
        self.assertIn(missing, message)

    def test_not_a_certificate(self) -> None:
        path = self.password_file(0o600)
        message = self.start("--rapi", "https://127.0.0.1:5080", "--rapi-cert", path)
        self.assertIn(f"no PEM certificate in {path}", message)
    def test_simulate_with_a_file_as_state_dir(self) -> None:
        with open(self.state_dir, "w") as f:
            f.write("not a directory\n")
        message = self.start("--simulate")
        self.assertIn(self.state_dir, message)

    def test_simulate_with_unusable_simulator_dir(self) -> None:
        os.makedirs(self.state_dir)
        with open(os.path.join(self.state_dir, "sim"), "w") as f:
            f.write("not a directory\n")
        message = self.start("--simulate")
        self.assertIn("cannot start the simulator", message)
        self.assertIn(os.path.join(self.state_dir, "sim"), message)
