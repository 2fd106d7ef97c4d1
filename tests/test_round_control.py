"""Admin control socket (real UNIX socket) and the ganeti-maintd-ctl tool; executors."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from maintd.admin import ctl
from maintd.cluster.executor import CommandExecutor, NoExecutor
from maintd.cluster.model import Node
from maintd.daemon.control import ControlService, track
from maintd.daemon.state import Action, MaintState, RepairStatus
from tests.test_round_incidents import incident


class FakeStore:
    def __init__(self, state: MaintState) -> None:
        self.state = state
        self.commits = 0

    def commit(self, new: MaintState) -> None:
        self.commits += 1
        self.state = new


class LiveCtx:
    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.state = store.state


class ControlTests(TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir, mode=0o700)
        self.path = os.path.join(self.dir, "ctl.sock")
        inc_a = incident("node-a", Action.EVACUATE, uuid="aaaa", jobs=(4, 5),
                         status=RepairStatus.PENDING, mtime=1.7e9)
        inc_b = incident("node-b", Action.LIVE_REPAIR, uuid="bbbb", status=RepairStatus.FAILED,
                         reason="no repair command")
        self.store = FakeStore(MaintState(incidents=(inc_a, inc_b), jobs=(5,),
                                          evacuated=("inst1",)))
        self.svc = ControlService(self.path, self.store, reactor)
        self.svc.startService()
        self.addCleanup(self.svc.stopService)

    def ctl(self, *argv: str) -> defer.Deferred[tuple[int, str, str]]:
        def run() -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = ctl.main(["--socket", self.path, *argv], out, err)
            return code, out.getvalue(), err.getvalue()

        return threads.deferToThread(run)

    async def _socket_mode(self) -> None:
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        self.assertEqual(mode, 0o600)

    def test_socket_mode(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._socket_mode())

    async def _other_user(self) -> None:
        python = "/usr/bin/python3"
        if os.getuid() != 0 or not os.access(python, os.X_OK):
            raise SkipTest("needs root and /usr/bin/python3 to try as user nobody")
        # the socket's directory is open to all here: only the socket's mode protects it
        code = ("import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "try:\n"
                "    s.connect(sys.argv[1])\n"
                "except PermissionError:\n"
                "    sys.exit(13)\n"
                "s.sendall(b'{\"op\": \"forget\", \"uuid\": \"aaaa\"}\\n')\n"
                "print(s.recv(1000))\n")
        parents = []
        p = os.path.dirname(os.path.abspath(self.path))
        top = os.path.abspath(os.getcwd())  # trial's temp dir
        while p.startswith(top):
            mode = stat.S_IMODE(os.stat(p).st_mode)
            if mode & 0o005 != 0o005:
                parents.append((p, mode))
            p = os.path.dirname(p)
        for d, mode in parents:  # let nobody reach the socket's directory
            os.chmod(d, mode | 0o005)
        try:
            result = await threads.deferToThread(
                subprocess.run, [python, "-c", code, self.path], user=65534,
                capture_output=True, timeout=60,
            )
        finally:
            for d, mode in parents:
                os.chmod(d, mode)
        self.assertEqual(result.returncode, 13, result.stdout + result.stderr)
        self.assertIsNotNone(self.store.state.incident("aaaa"))

    def test_other_users_cannot_connect(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._other_user())

    async def _list(self) -> None:
        code, out, err = await self.ctl("list")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["UUID", "NODE", "ACTION", "STATUS", "JOBS", "CHANGED",
                                            "REASON"])
        self.assertTrue(lines[1].startswith("aaaa  node-a  evacuate     pending"), lines[1])
        self.assertIn("4,5", lines[1])
        self.assertIn("no repair command", lines[2])
        self.assertIn("Awaited jobs: 5", out)
        self.assertIn("Evacuated instances: inst1", out)
        code, out, _ = await self.ctl("list", "--json")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out), self.store.state.to_json())

    def test_list(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._list())

    async def _cancel_forget(self) -> None:
        live = LiveCtx(self.store)
        track(live)
        code, out, err = await self.ctl("cancel", "aaaa")
        self.assertEqual((code, out), (0, "Incident aaaa canceled.\n"), err)
        inc = self.store.state.incident("aaaa")
        assert inc is not None
        self.assertEqual(inc.status, RepairStatus.CANCELED)
        self.assertIs(live.state, self.store.state, "a running round sees the change")
        code, out, err = await self.ctl("cancel", "bbbb")
        self.assertEqual(code, 1)
        self.assertIn("already failed", err)
        code, out, err = await self.ctl("forget", "bbbb")
        self.assertEqual(code, 0)
        self.assertIsNone(self.store.state.incident("bbbb"))
        code, out, err = await self.ctl("forget", "nope")
        self.assertEqual(code, 1)
        self.assertIn("no incident nope", err)

    async def _json_anywhere(self) -> None:
        # `ganeti-maintd-ctl --json list` is as natural as `list --json`.
        code, after, err = await self.ctl("list", "--json")
        self.assertEqual(code, 0, err)
        code, before, err = await self.ctl("--json", "list")
        self.assertEqual((code, before), (0, after), err)
        self.assertEqual(json.loads(before)["jobs"], [5])

    def test_json_before_the_command(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._json_anywhere())

    def test_state_dir_names_the_socket(self) -> None:
        # The daemon's --state-dir puts the socket there; the tool takes the same option.
        err = io.StringIO()
        code = ctl.main(["--state-dir", "/nonexistent/maintd", "list"], io.StringIO(), err)
        self.assertEqual(code, ctl.EXIT_UNREACHABLE)
        self.assertIn("/nonexistent/maintd/ctl.sock", err.getvalue())

    def test_cancel_forget(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._cancel_forget())

    async def _bad_requests(self) -> None:
        def raw(payload: bytes) -> dict[str, Any]:
            import socket

            s = socket.socket(socket.AF_UNIX)
            s.connect(self.path)
            s.sendall(payload)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            s.close()
            return json.loads(data)  # type: ignore[no-any-return]

        for payload, needle in [(b"{oops\n", "malformed request"),
                                (b'{"op": "list", "op": "cancel"}\n', "duplicate key 'op'"),
                                (b'{"op": "cancel", "uuid": NaN}\n', "NaN is not JSON"),
                                (b"[1]\n", "JSON object"),
                                (b'{"op": "reboot"}\n', "unknown op"),
                                (b'{"op": "cancel"}\n', "needs an incident"),
                                (b"x" * 5000 + b"\n", "longer than")]:
            answer = await threads.deferToThread(raw, payload)
            self.assertFalse(answer["ok"])
            self.assertIn(needle, answer["error"])
        self.assertEqual(self.store.commits, 0)

    def test_bad_requests(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._bad_requests())


class CtlNoDaemonTests(SynchronousTestCase):
    def test_no_daemon(self) -> None:
        err = io.StringIO()
        code = ctl.main(["--socket", "/nonexistent/ctl.sock", "list"], io.StringIO(), err)
        self.assertEqual(code, ctl.EXIT_UNREACHABLE)
        self.assertIn("cannot connect to /nonexistent/ctl.sock", err.getvalue())


class ExecutorTests(TestCase):
    node = Node(name="node1", uuid="u1", group="g")

    def test_no_executor(self) -> None:
        r = self.successResultOf(NoExecutor().execute(self.node, "fix", {}))
        self.assertEqual((r.ok, r.reason), (False, "no repair executor configured"))

    async def _command(self) -> None:
        script = os.path.join(self.mktemp())
        with open(script, "w") as f:
            f.write("import sys, json\nr = json.load(sys.stdin)\n"
                    "print(sys.argv[1], sys.argv[2], r['status'])\n"
                    "sys.exit(0 if sys.argv[2] == 'good' else 3)\n")
        ex = CommandExecutor(reactor, [sys.executable, script], timeout=60)
        ok = await ex.execute(self.node, "good", {"status": "live-repair"})
        self.assertTrue(ok.ok)
        self.assertEqual(ok.output.strip(), "node1 good live-repair")
        bad = await ex.execute(self.node, "bad", {"status": "live-repair"})
        self.assertFalse(bad.ok)
        self.assertIn("exited with 3", bad.reason)
        with self.assertRaises(ValueError):
            CommandExecutor(reactor, ["relative"])

    def test_command(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._command())


class ControlStartTests(SynchronousTestCase):
    def test_bad_paths_do_not_stop_the_daemon(self) -> None:
        d = self.mktemp()
        os.makedirs(d)
        plain = os.path.join(d, "file")
        open(plain, "w").close()
        for path, needle in [(os.path.join(d, "x" * 120), "UNIX sockets allow 107"),
                             (plain, "is not a socket")]:
            svc = ControlService(path, FakeStore(MaintState()), reactor)
            svc.startService()
            errors = self.flushLoggedErrors()
            self.assertEqual(errors, [])
            self.assertTrue(svc.running)
            self.assertIsNone(svc._port, needle)
            svc.stopService()
