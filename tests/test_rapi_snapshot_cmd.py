"""ganeti-maintd-snapshot against a local HTTPS RAPI serving real samples."""

from __future__ import annotations

import io
import json
import os
import sys

from twisted.internet import reactor, utils
from twisted.trial.unittest import TestCase

from maintd.admin.snapshot import parse_args, snapshot
from maintd.cluster import model
from tests.test_rapi_helpers import LocalHTTPSRapi


class SnapshotCommandTests(LocalHTTPSRapi, TestCase):
    def argv(self, out: str, *extra: str) -> list[str]:
        return [
            "--rapi", self.url, "--rapi-user", "maintd",
            "--rapi-password-file", self.pwfile, "--rapi-cert", self.server_pem,
            "-o", out, *extra,
        ]

    async def test_writes_model_json(self) -> None:
        out = os.path.join(self.dir, "snap.json")
        err = io.StringIO()
        status = await snapshot(reactor, parse_args(self.argv(out)), err)
        self.assertEqual(status, 0, err.getvalue())
        with open(out) as f:
            doc = json.load(f)
        cluster = model.from_json(doc)
        self.assertEqual(cluster.name, "cluster.sandbox.test")
        self.assertEqual(len(cluster.instances), 6)
        self.assertEqual(cluster.nodes["node1.sandbox.test"].group, "default")

    async def test_wrong_certificate_fails_without_output(self) -> None:
        out = os.path.join(self.dir, "snap.json")
        args = self.argv(out)
        args[args.index(self.server_pem)] = self.other_pem
        err = io.StringIO()
        status = await snapshot(reactor, parse_args(args), err)
        self.assertEqual(status, 1)
        self.assertIn("pinned RAPI certificate", err.getvalue())
        self.assertFalse(os.path.exists(out))

    async def test_console_entry_point(self) -> None:
        out = os.path.join(self.dir, "snap.json")
        code = "from maintd.admin.snapshot import main; main()"
        stdout, stderr, status = await utils.getProcessOutputAndValue(
            sys.executable, ["-c", code, *self.argv(out)], env=os.environ, reactor=reactor
        )
        self.assertEqual(status, 0, stderr)
        self.assertIn(b"1 nodes, 6 instances", stderr)
        with open(out) as f:
            self.assertEqual(json.load(f)["format"], model.SNAPSHOT_FORMAT)
        # bad password file mode: exit 1 with a message naming the file
        os.chmod(self.pwfile, 0o644)
        stdout, stderr, status = await utils.getProcessOutputAndValue(
            sys.executable, ["-c", code, *self.argv(out)], env=os.environ, reactor=reactor
        )
        self.assertEqual(status, 1)
        self.assertIn(self.pwfile.encode(), stderr)
