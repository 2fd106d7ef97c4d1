"""``twistd -n ganeti-sim`` as a user runs it, and its options."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import treq
from twisted.internet import defer, protocol, reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.sim.embed import free_port
from maintd.sim.tap import SimOptions as Options

from .test_sim_fidelity import ONE_GROUP
from .tools import find_tool

READY = b"ganeti-sim: cluster"
TWISTD = "from twisted.scripts.twistd import run; run()"


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        opts = Options()
        opts.parseOptions([])
        self.assertEqual(opts["mond-port"], 1815)
        self.assertEqual(opts["rapi-port"], 0)
        self.assertIsNone(opts["scenario"])
        self.assertFalse(opts["plain-http"])
        self.assertFalse(opts["anonymous-reads"])

    def test_bad_values_are_usage_errors(self) -> None:
        for args in (
            ["--job-seconds", "-1"],
            ["--mond-port", "70000"],
            ["--scenario", "/nonexistent.json"],
            ["--rapi-port", "x"],
        ):
            with self.assertRaises(usage.UsageError):
                Options().parseOptions(args)

    def test_bad_values_name_the_option_and_value(self) -> None:
        # Not Python's "invalid literal for int() with base 10".
        for args, fragment in (
            (["--rapi-port", "notaport"], "not a port number: 'notaport'"),
            (["--mond-port", "x"], "not a port number: 'x'"),
            (["--job-seconds", "soon"], "not a number of seconds: 'soon'"),
        ):
            with self.assertRaises(usage.UsageError) as cm:
                Options().parseOptions(args)
            self.assertIn(fragment, str(cm.exception))
            self.assertNotIn("literal", str(cm.exception))


class AgentOptionsTests(SynchronousTestCase):
    """``--hmac-key`` / ``--agent-port``: the simulated nodes' signed agents."""

    def test_generated_key_is_printed_and_signs(self) -> None:
        import io
        from contextlib import redirect_stdout

        from maintd.common import signing
        from maintd.sim.tap import makeService

        work = os.path.abspath(self.mktemp())
        opts = Options()
        opts.parseOptions(["--workdir", work, "--agent-port", "0", "--mond-port", "0"])
        defaults = Options()
        defaults.parseOptions([])
        self.assertEqual(defaults["agent-port"], 1817)
        out = io.StringIO()
        with redirect_stdout(out):
            sim = makeService(opts, reactor=reactor)
        key_file = os.path.join(work, "hmac.key")
        self.assertIn(f"ganeti-sim HMAC key: {key_file}", out.getvalue())
        self.assertIn(f"ganeti-sim agent certificate: {work}/server.pem", out.getvalue())
        self.assertEqual(os.stat(key_file).st_mode & 0o077, 0, "the key is private")
        self.assertEqual(sim.simulator.agents.key, signing.read_key(key_file))  # type: ignore[attr-defined]
        # a given key is used, not replaced, and not printed as generated
        opts = Options()
        opts.parseOptions(["--workdir", work + "2", "--hmac-key", key_file,
                           "--plain-http", "--agent-port", "0"])
        out = io.StringIO()
        with redirect_stdout(out):
            sim = makeService(opts, reactor=reactor)
        self.assertNotIn("HMAC key", out.getvalue())
        self.assertEqual(sim.simulator.agents.key, signing.read_key(key_file))  # type: ignore[attr-defined]
        self.assertIsNone(sim.simulator.agents.tls, "--plain-http: plain agents too")  # type: ignore[attr-defined]
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--hmac-key", "/nonexistent/hmac.key"])


class _Watch(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.output += data
        if READY in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived  # noqa: N815

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"ganeti-sim exited:\n{self.output.decode()}"))
        self.ended.callback((reason.value.exitCode, reason.value.signal))


class TwistdTests(TestCase):
    def test_twistd_ganeti_sim_serves_hbal_and_stops(self) -> Any:
        async def go() -> None:
            hbal = find_tool("hbal")
            workdir = os.path.abspath(self.mktemp())
            rapi_port = free_port()
            args = [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "ganeti-sim",
                "--scenario",
                ONE_GROUP,
                "--plain-http",
                "--anonymous-reads",
                "--rapi-port",
                str(rapi_port),
                "--mond-port",
                str(free_port()),
                "--job-seconds",
                "0",
                "--workdir",
                workdir,
            ]
            watch = _Watch()
            proc = reactor.spawnProcess(watch, sys.executable, args, env=dict(os.environ))
            timeout = reactor.callLater(60, lambda: proc.signalProcess("KILL"))
            try:
                await watch.ready
                text = watch.output.decode()
                self.assertIn(f"ganeti-sim RAPI: http://127.0.0.1:{rapi_port}", text)
                self.assertIn("ganeti-sim RAPI user: maintd password: ", text)
                with open(os.path.join(workdir, "rapi-password"), encoding="utf-8") as f:
                    password = f.read().strip()
                self.assertIn(password, text)
                from twisted.internet.utils import getProcessOutputAndValue

                out, err, code = await getProcessOutputAndValue(
                    hbal, ["-m", f"http://127.0.0.1:{rapi_port}", "-v"], env=dict(os.environ)
                )
                self.assertEqual(code, 0, err)
                self.assertIn(b"Loaded 6 nodes, 7 instances", out + err)
                resp = await treq.put(
                    f"http://127.0.0.1:{rapi_port}/sim/jobs/fail-next",
                    data=b"1",
                    auth=("maintd", password),
                    persistent=False,
                )
                self.assertEqual(resp.code, 200)
                self.assertEqual(json.loads(await resp.content()), 1)
            finally:
                if proc.pid is not None:
                    proc.signalProcess(signal.SIGTERM)
                code_and_signal = await watch.ended
                if timeout.active():
                    timeout.cancel()
            # twistd shuts down cleanly, then exits with the signal that stopped it.
            self.assertIn(code_and_signal, [(0, None), (None, signal.SIGTERM)])
            self.assertIn(b"Server Shut Down.", watch.output)

        return defer.ensureDeferred(go())
