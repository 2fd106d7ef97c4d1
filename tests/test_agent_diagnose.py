"""The agent's diagnose: whitelist rules, bad scripts (garbage, truncated, huge,
nested, non-UTF-8, never exiting, forking), all a "collector failed" report.

Scripts really run (the reactor, real processes); the whitelist's owner is
this test's user (the agent requires root)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.agent import whitelist
from maintd.agent.diagnose import DiagnoseCollector, parse_output

UID = os.geteuid()


def make_dir(test: Any, mode: int = 0o755) -> str:
    d = os.path.abspath(test.mktemp())
    os.makedirs(d)
    os.chmod(d, mode)
    return d


def script(d: str, name: str, body: str, mode: int = 0o755) -> str:
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, mode)
    return path


class WhitelistTests(SynchronousTestCase):
    def test_rules_of_restricted_commands(self) -> None:
        d = make_dir(self)
        good = script(d, "good_one-2", "true")
        self.assertEqual(whitelist.resolve(d, "good_one-2", uid=UID), good)
        script(d, "groupw", "true", 0o775)
        script(d, "noexec", "true", 0o644)
        os.makedirs(os.path.join(d, "adir"))
        outside = make_dir(self)
        script(outside, "evil", "true")
        os.symlink(os.path.join(outside, "evil"), os.path.join(d, "link-out"))
        os.symlink(good, os.path.join(d, "link-in"))
        refused = {
            "../evil": "is not [A-Za-z0-9_-]+",
            "a.b": "is not [A-Za-z0-9_-]+",
            "": "empty command name",
            "groupw": "writable by group or others",
            "noexec": "not executable",
            "adir": "not a regular file",
            "link-out": "leaves the directory",
            "missing": "No such file",
        }
        for name, why in refused.items():
            with self.assertRaises(whitelist.WhitelistError, msg=name) as cm:
                whitelist.resolve(d, name, uid=UID)
            self.assertIn(why, str(cm.exception), name)
        self.assertEqual(whitelist.resolve(d, "link-in", uid=UID), good,
                         "a symlink staying inside is followed")
        with self.assertRaises(whitelist.WhitelistError) as cm:
            whitelist.resolve(d, "good_one-2", uid=UID + 1)
        self.assertIn("not by root", str(cm.exception))
        os.chmod(d, 0o777)
        with self.assertRaises(whitelist.WhitelistError) as cm:
            whitelist.resolve(d, "good_one-2", uid=UID)
        self.assertIn(f"whitelist directory {d} is writable", str(cm.exception))
        self.assertRaises(whitelist.WhitelistError, whitelist.check_dir, d + "-none", uid=UID)


class ParseTests(SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertEqual(parse_output("d", b'{"status": "Ok"}\n'), {"status": "Ok"})
        obj = {"status": "live-repair", "command": "fix-disk", "details": {"disk": "sdb"}}
        import json

        self.assertEqual(parse_output("d", json.dumps(obj).encode()), obj)

    def test_invalid(self) -> None:
        bad = {
            b"garbage": "not JSON",
            b'{"status": "Ok"': "not JSON",  # truncated
            b'{"status": "reboot"}': "is not one of",
            b'{"status": "Ok", "extra": 1}': "unknown members",
            b'{"status": "live-repair", "command": "../x"}': "is not [A-Za-z0-9_-]+",
            b'["Ok"]': "not a JSON object",
            b'{"status": "Ok", "details": ' + b"[" * 50 + b"]" * 50 + b"}": "nested deeper",
            b'{"status": "Ok", "details": "\xff"}': "not UTF-8",
            b'{"status": "Ok", "details": "' + b"x" * 20000 + b'"}': "exceeds the limit",
            b'{"status": "Ok", "status": "evacuate"}': "duplicate key",
        }
        for out, why in bad.items():
            with self.assertRaises(ValueError, msg=out[:40]) as cm:
                parse_output("diag", out)
            self.assertIn("output of diagnose command diag", str(cm.exception))
            self.assertIn(why, str(cm.exception), out[:40])


class CollectorTests(TestCase):
    timeout = 60

    def collector(self, body: str | None, *, timeout: float = 10.0,
                  mode: int = 0o755) -> DiagnoseCollector:
        d = make_dir(self)
        if body is not None:
            script(d, "diag", body, mode)
        return DiagnoseCollector(reactor, command="diag", directory=d, timeout=timeout,
                                 wallclock=time.time, uid=UID)

    async def data(self, body: str | None, **kw: Any) -> dict[str, Any]:
        c = self.collector(body, **kw)
        self.assertTrue(c.data.get("collector_failed"), "nothing before the first run")
        await c.run_once()
        return c.data

    def run_async(self, f: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(f())

    def test_builtin_is_ok(self) -> defer.Deferred[None]:
        async def t() -> None:
            c = DiagnoseCollector(reactor, command=None, directory="/nonexistent", timeout=1,
                                  wallclock=time.time)
            self.assertEqual(c.data, {"status": "Ok"})
            await c.run_once()
            self.assertEqual(c.data, {"status": "Ok"})
        return self.run_async(t)

    def test_good_script(self) -> defer.Deferred[None]:
        async def t() -> None:
            data = await self.data('echo \'{"status": "evacuate", "details": ["psu"]}\'')
            self.assertEqual(data, {"status": "evacuate", "details": ["psu"]})
        return self.run_async(t)

    def failed_with(self, body: str, why: str) -> defer.Deferred[None]:
        """The script ``body`` gives a collector-failed report naming ``why``."""
        async def t() -> None:
            data = await self.data(body)
            self.assertEqual(set(data), {"collector_failed", "reason"}, body)
            self.assertIn(why, data["reason"])
        return self.run_async(t)

    def test_garbage_output(self) -> defer.Deferred[None]:
        return self.failed_with("echo garbage", "not JSON")

    def test_truncated_output(self) -> defer.Deferred[None]:
        return self.failed_with("printf '{\"status\": \"Ok\"'", "not JSON")

    def test_non_utf8_output(self) -> defer.Deferred[None]:
        return self.failed_with("printf '{\"status\": \"Ok\", \"details\": \"\\377\"}'",
                                "not UTF-8")

    def test_deeply_nested_output(self) -> defer.Deferred[None]:
        return self.failed_with("python3 -c 'print(\"[\" * 200 + \"]\" * 200)'", "nested")

    def test_huge_output(self) -> defer.Deferred[None]:
        return self.failed_with("head -c 200000 /dev/zero | tr '\\0' x", "printed more than")

    def test_failing_script(self) -> defer.Deferred[None]:
        return self.failed_with("echo '{\"status\": \"Ok\"}'; exit 3", "exited with status 3")

    def test_killed_script(self) -> defer.Deferred[None]:
        return self.failed_with("kill -9 $$", "killed by signal 9")

    def test_not_whitelisted_runs_nothing(self) -> defer.Deferred[None]:
        async def t() -> None:
            marker = os.path.abspath(self.mktemp())
            data = await self.data(f"touch {marker}; echo '{{\"status\": \"Ok\"}}'", mode=0o777)
            self.assertIn("writable by group or others", data["reason"])
            self.assertFalse(os.path.exists(marker), "nothing run")
            data = await self.data(None)
            self.assertIn("No such file", data["reason"])
        return self.run_async(t)

    def test_never_exiting_and_forking_scripts_are_killed_whole(self) -> defer.Deferred[None]:
        async def t() -> None:
            pidfile = os.path.abspath(self.mktemp())
            started = time.monotonic()
            data = await self.data(f"sleep 1000 & echo $! > {pidfile}; sleep 1000", timeout=1.0)
            self.assertIn("did not finish within 1s and was killed", data["reason"])
            self.assertLess(time.monotonic() - started, 20)
            with open(pidfile) as f:
                child = int(f.read())
            self.assertFalse(_alive(child), "the forked child was killed too")
            # exits at once, leaving a child that holds stdout open
            data = await self.data(f"(sleep 1000; echo late) & echo $! > {pidfile}; "
                                   "echo '{\"status\": \"Ok\"}'")
            self.assertEqual(data, {"status": "Ok"})
            with open(pidfile) as f:
                self.assertFalse(_alive(int(f.read())), "left-behind children are killed")
        return self.run_async(t)


def _alive(pid: int) -> bool:
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie of a reaped group goes away soon; check the state
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True

