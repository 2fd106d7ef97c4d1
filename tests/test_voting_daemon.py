"""End to end: the production life cycle of ``twistd ganeti-maintd``.

* daemonised (no ``-n``) with ``--pidfile``/``--logfile``: pid file written,
  HTTP answers, SIGTERM stops it and removes the pid file;
* master vote lost at startup: the very process started (even in daemon
  mode) exits 11 before forking, with the votes on stderr, no pid file;
* mastership lost while running (the fake nodes switch their vote): the
  daemon stops and exits 11, its pid file removed.

The daemon's RAPI is unreachable (``http://127.0.0.1:1``): rounds fail and
back off, which does not matter here.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from maintd.cluster.voting import EXIT_NOTMASTER

from .commands import pid_alive
from .test_voting_fakes import Certs, free_closed_port, start_nodes, write_ssconf

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
TIMEOUT = 60.0
ME = "node1.example.com"
OTHER = "node2.example.com"


class Proc(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[BaseException] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class DaemonLifeCycleTests(TestCase):
    timeout = 150

    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.pidfile = os.path.join(self.dir, "ganeti-maintd.pid")
        self.logfile = os.path.join(self.dir, "maintd.log")
        self.port = free_closed_port()

    def spawn(self, args: list[str]) -> Proc:
        proto = Proc()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        reactor.spawnProcess(proto, sys.executable, TWISTD + args, env=env, path=self.dir)  # type: ignore[attr-defined]
        self.addCleanup(self._kill, proto)
        return proto

    def _kill(self, proto: Proc) -> defer.Deferred[object] | None:
        if proto.ended.called:
            return None
        proto.transport.signalProcess("KILL")  # type: ignore[union-attr]
        return proto.ended

    def daemon_args(self, *extra: str) -> list[str]:
        key = os.path.join(self.dir, "hmac.key")
        with open(key, "w") as f:
            f.write("0" * 40 + "\n")
        return [
            "ganeti-maintd", "-p", str(self.port), "-b", "127.0.0.1",
            "--state-dir", os.path.join(self.dir, "state"),
            "--rapi", "http://127.0.0.1:1", "--hmac-key", key, "--agent-plain-http", *extra,
        ]

    async def wait_for(self, cond: Any, what: str, proto: Proc | None = None) -> None:
        for _ in range(int(TIMEOUT / 0.05)):
            if cond():
                return
            await sleep(0.05)
        out = proto.output.decode() if proto else ""
        log = open(self.logfile).read() if os.path.exists(self.logfile) else ""
        self.fail(f"timed out waiting for {what}\n{out}\n{log}")

    async def get_root(self) -> object:
        response = await treq.get(f"http://127.0.0.1:{self.port}/", timeout=10, pool=self.pool)
        return json.loads(await response.content())

    def test_daemonised_pidfile_logfile_sigterm(self) -> defer.Deferred[None]:
        async def run() -> None:
            parent = self.spawn(["--pidfile", self.pidfile, "--logfile", self.logfile,
                                 *self.daemon_args("--no-voting", "--yes-do-it")])
            # the parent returns once the daemon child has started its services
            reason = await parent.ended.addTimeout(TIMEOUT, reactor)
            self.assertIsInstance(reason, ProcessDone, parent.output.decode())
            self.assertTrue(os.path.exists(self.pidfile), parent.output.decode())
            pid = int(open(self.pidfile).read().strip())
            self.addCleanup(lambda: pid_alive(pid) and os.kill(pid, signal.SIGKILL))
            self.assertTrue(pid_alive(pid))
            self.assertEqual(await self.get_root(), [1])
            log = open(self.logfile).read()
            self.assertIn("master vote skipped", log)
            os.kill(pid, signal.SIGTERM)
            await self.wait_for(lambda: not os.path.exists(self.pidfile), "pid file removal")
            await self.wait_for(lambda: not pid_alive(pid), "daemon exit")
            log = open(self.logfile).read()
            self.assertIn("Server Shut Down.", log)
            self.assertNotIn("Unhandled", log)

        return defer.Deferred.fromCoroutine(run())

    def voting_setup(self, master: str) -> list[Any]:
        certs = Certs(self.dir)
        nodes = start_nodes(3, certs.cluster.path, certs.cluster.path)
        for n in nodes:
            self.addCleanup(n.stop)
            n.vote_for(master)
        ssconf = os.path.join(self.dir, "ssconf")
        os.makedirs(ssconf)
        names = [ME, OTHER, "node3.example.com"]
        write_ssconf(ssconf, {name: n.host for name, n in zip(names, nodes, strict=True)}, ME)
        self.vote_args = ["--ssconf-dir", ssconf, "--noded-cert", certs.cluster.path,
                          "--noded-port", str(nodes[0].port), "--hostname", ME]
        return nodes

    def test_vote_lost_at_startup_exits_11_before_daemonising(self) -> defer.Deferred[None]:
        async def run() -> None:
            nodes = self.voting_setup(OTHER)
            nodes[0].vote_for(ME)
            proc = self.spawn(["--pidfile", self.pidfile, "--logfile", self.logfile,
                               *self.daemon_args(*self.vote_args)])
            reason = await proc.ended.addTimeout(TIMEOUT, reactor)
            out = proc.output.decode()
            self.assertIsInstance(reason, ProcessTerminated, out)
            self.assertEqual(reason.exitCode, EXIT_NOTMASTER, out)  # type: ignore[attr-defined]
            self.assertIn("refusing to start", out)
            self.assertIn("1 of 3 nodes voted for node1.example.com", out)
            self.assertIn("node2.example.com->node2.example.com", out)
            self.assertFalse(os.path.exists(self.pidfile))
            self.assertEqual([len(n.requests) for n in nodes], [1, 1, 1])

        return defer.Deferred.fromCoroutine(run())

    def test_mastership_lost_while_running_exits_11(self) -> defer.Deferred[None]:
        async def run() -> None:
            nodes = self.voting_setup(ME)
            proc = self.spawn(["-n", "--pidfile", self.pidfile, "--logfile", self.logfile,
                               *self.daemon_args(*self.vote_args, "--master-check-interval", "0.2")])
            await self.wait_for(lambda: os.path.exists(self.pidfile), "pid file", proc)
            await self.wait_for(lambda: len(nodes[2].requests) >= 2, "a run-time re-check", proc)
            self.assertEqual(await self.get_root(), [1])
            for n in nodes[1:]:
                n.vote_for(OTHER)  # master failover to node2
            reason = await proc.ended.addTimeout(TIMEOUT, reactor)
            log = open(self.logfile).read()
            self.assertIsInstance(reason, ProcessTerminated, log)
            self.assertEqual(reason.exitCode, EXIT_NOTMASTER, log)  # type: ignore[attr-defined]
            self.assertIn("is no longer the master", log)
            self.assertIn("node2.example.com=2", log)
            self.assertIn("Server Shut Down.", log)
            self.assertFalse(os.path.exists(self.pidfile))

        return defer.Deferred.fromCoroutine(run())
