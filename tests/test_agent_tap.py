"""``twistd ganeti-maintd-agent``: startup errors are one line naming the file and a
non-zero exit; a started agent serves its signed report over TLS on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from maintd.agent import tap
from maintd.agent.http import IDLE_TIMEOUT, QuietSite
from maintd.cluster.agent import AgentClient
from maintd.cluster.model import Node
from maintd.cluster.rapi.tls import PinnedCertificatePolicy
from maintd.common import signing
from maintd.daemon.state import Action
from maintd.sim import tls
from tests.simulators import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files(test: SynchronousTestCase) -> dict[str, str]:
    d = os.path.abspath(test.mktemp())
    os.makedirs(os.path.join(d, "repair"))
    os.makedirs(os.path.join(d, "diag"))
    for sub in ("repair", "diag"):
        os.chmod(os.path.join(d, sub), 0o755)
    key = os.path.join(d, "hmac.key")
    with open(key, "w") as f:
        f.write("ab" * 20 + "\n")
    cert = os.path.join(d, "server.pem")
    tls.write_pem(cert)
    return {"key": key, "cert": cert, "repair": os.path.join(d, "repair"),
            "diag": os.path.join(d, "diag"), "state": os.path.join(d, "state"), "dir": d}


def argv(f: dict[str, str], *extra: str) -> list[str]:
    return ["--hmac-key", f["key"], "--ssl-cert", f["cert"], "--repair-dir", f["repair"],
            "--diagnose-dir", f["diag"], "--state-dir", f["state"], "-b", "127.0.0.1",
            "--hostname", "node1.example.com", *extra]


class StartupErrorTests(SynchronousTestCase):
    def make(self, args: list[str]) -> str:
        o = tap.Options()
        o.parseOptions(args)
        with self.assertRaises(SystemExit) as cm:
            tap.makeService(o, reactor=reactor)
        text = str(cm.exception)
        self.assertEqual(len(text.splitlines()), 1, text)
        self.assertTrue(text.startswith("ganeti-maintd-agent: "), text)
        return text

    def test_each_missing_file_is_named(self) -> None:
        if os.geteuid() != 0:
            raise self.skipTest("whitelist directories must be owned by root")  # type: ignore[misc]
        f = files(self)
        cases = {
            "--hmac-key": (f["dir"] + "/none.key", "cannot read HMAC key"),
            "--ssl-cert": (f["dir"] + "/none.pem", "cannot read certificate"),
            "--repair-dir": (f["dir"] + "/no-repair", "whitelist directory"),
        }
        for opt, (path, why) in cases.items():
            args = argv(f)
            args[args.index(opt) + 1] = path
            text = self.make(args)
            self.assertIn(path, text, opt)
            self.assertIn(why, text, opt)
        text = self.make(argv(f, "--diagnose-command", "d", "--diagnose-dir", f["dir"] + "/x"))
        self.assertIn(f["dir"] + "/x", text)
        with open(f["key"], "w") as fh:
            fh.write("")
        self.assertIn("is empty", self.make(argv(f)))
        with open(f["key"], "w") as fh:
            fh.write("ab" * 20 + "\n")
        os.chmod(f["repair"], 0o777)
        self.assertIn("is writable by group or others", self.make(argv(f)))
        os.chmod(f["repair"], 0o755)
        with open(f["cert"], "w") as fh:
            fh.write("not a pem\n")
        self.assertIn("is not a PEM key and certificate", self.make(argv(f)))

    def test_exit_status_of_twistd(self) -> None:
        f = files(self)
        args = argv(f)
        args[args.index("--hmac-key") + 1] = "/nonexistent/hmac.key"
        env = dict(os.environ, PYTHONPATH=ROOT)
        run = subprocess.run(
            [sys.executable, "-m", "twisted", "ganeti-maintd-agent", "-p", "0", *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("ganeti-maintd-agent: cannot read HMAC key /nonexistent/hmac.key",
                      run.stderr + run.stdout)
        self.assertNotIn("Traceback", run.stderr + run.stdout)


class ServingTests(TestCase):
    timeout = 60

    def test_signed_report_over_tls(self) -> defer.Deferred[None]:
        async def t() -> None:
            if os.geteuid() != 0:
                raise self.skipTest("whitelist directories must be owned by root")  # type: ignore[misc]
            f = files(self)
            script = os.path.join(f["diag"], "health")
            with open(script, "w") as fh:
                fh.write("#!/bin/sh\necho '{\"status\": \"evacuate-failover\"}'\n")
            os.chmod(script, 0o755)
            port = free_port()
            o = tap.Options()
            o.parseOptions(["-p", str(port), *argv(f, "--diagnose-command", "health")])
            svc = tap.makeService(o, reactor=reactor)
            svc.startService()
            self.addCleanup(svc.stopService)
            while svc.collector.runs == 0 or svc.collector._running is not None:
                await task_sleep(0.02)
            policy = PinnedCertificatePolicy.from_file(f["cert"])
            client = treq.client.HTTPClient(Agent(reactor, contextFactory=policy,
                                                  pool=HTTPConnectionPool(reactor, False)))
            r = await client.get(f"https://127.0.0.1:{port}/1/report/node/diagnose")
            body = await treq.content(r)
            key = signing.read_key(f["key"])
            report, _ = signing.verify(json.loads(body), key, time.time(), source="agent")
            self.assertEqual(report["data"], {"status": "evacuate-failover"})
            self.assertEqual((report["name"], report["category"], report["kind"]),
                             ("diagnose", "node", 1))
            self.assertEqual(set(report), {"name", "version", "format_version", "timestamp",
                                           "category", "kind", "data"})
            r = await client.get(f"https://127.0.0.1:{port}/1/list/collectors")
            self.assertEqual(json.loads(await treq.content(r)), [["diagnose", "node", 1]])
            # the daemon's client: its connection is kept open by the agent
            # and used again for the next round
            agents = AgentClient.create(reactor, key=key, cert=f["cert"], port=port, timeout=5)
            self.addCleanup(lambda: defer.Deferred.fromCoroutine(agents.close()))
            n = Node(name="node1.example.com", uuid="u1", group="g", pip="127.0.0.1")
            for _ in range(2):
                out = await agents.gather([n], agents.diagnose)
                self.assertEqual(out[n.name].status, Action.EVACUATE_FAILOVER)
            self.assertEqual((agents.pool.opened, agents.pool.reused), (1, 1))
            self.assertEqual(svc.site.timeOut, IDLE_TIMEOUT)
        return defer.Deferred.fromCoroutine(t())


class ConnectionCapTests(SynchronousTestCase):
    def test_the_least_recently_active_connection_makes_room(self) -> None:
        from twisted.internet.testing import MemoryReactorClock, StringTransport
        from twisted.web.resource import Resource

        site = QuietSite(Resource(), max_connections=2)
        site.reactor = site.guard.clock = MemoryReactorClock()
        channels = []
        for _ in range(3):
            ch = site.buildProtocol(None)
            t = StringTransport()
            ch.makeConnection(t)
            channels.append((ch, t))
            if len(channels) == 2:
                # the first one completes a request: the second is now the idle one
                channels[0][0].dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(channels[1][1].disconnecting, "the least recently active is closed")
        self.assertFalse(channels[0][1].disconnecting)
        self.assertFalse(channels[2][1].disconnecting)
        self.assertEqual(site.guard.evicted, 1)
        channels[1][0].connectionLost(None)
        self.assertEqual(len(site.guard), 2)


def task_sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
