"""The vote against the real Ganeti 3.0 node daemon (``ganeti-noded``).

Each node is a real ``ganeti-noded -f`` in its own Ganeti *virtual cluster*
root (``GANETI_ROOTDIR=<tmp>/<node name>``, ``GANETI_HOSTNAME``), all sharing
one cluster certificate and one port on their own 127.a.b.c address.  noded
answers ``/master_node_name`` from its ``ssconf_master_node``, and checks the
client certificate the way Ganeti does (its digest must be a master
candidate's from ``ssconf_master_candidates_certs``, else bootstrap mode
accepts ``server.pem`` itself).

Needs root and Ganeti's ``/usr/sbin/ganeti-noded``: skipped otherwise, a
failure where ``MAINTD_REQUIRE_REAL_GANETI=1``.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from maintd.cluster.voting import NodedTLS, NotMasterError, TwistedNodedClient, Verdict
from maintd.daemon.config import DaemonConfig
from maintd.daemon.mastership import check_at_startup, runtime_vote

from .test_voting_fakes import make_cert, random_block
from .tools import skip_or_fail

NODED = "/usr/sbin/ganeti-noded"
NAMES = ["node1.example.com", "node2.example.com", "node3.example.com"]
ME = NAMES[0]


def ganeti_digest(pem_path: str) -> str:
    """pyOpenSSL's ``cert.digest("sha1")`` format, as noded compares it."""
    with open(pem_path, "rb") as f:
        cert = x509.load_pem_x509_certificates(f.read())[0]
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA1()))  # noqa: S303 (Ganeti's choice)


class RealNodedTests(TestCase):
    timeout = 120

    def setUp(self) -> defer.Deferred[None]:
        if not os.access(NODED, os.X_OK):
            skip_or_fail(f"{NODED} not installed (apt-get install ganeti-3.0)")
        if os.geteuid() != 0:
            skip_or_fail("ganeti-noded needs root")
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.roots = {n: os.path.join(self.base, n) for n in NAMES}
        for root in self.roots.values():
            for sub in ("var/lib/ganeti", "var/log/ganeti", "var/run/ganeti", "etc/ganeti"):
                os.makedirs(os.path.join(root, sub))
        self.lib = {n: os.path.join(r, "var/lib/ganeti") for n, r in self.roots.items()}
        server = os.path.join(self.base, "server.pem")
        _, key, cert = make_cert(server, ca=True)
        self.server_pem = server
        # not yet where the client looks for it (client.pem next to server.pem)
        self.client_pem = os.path.join(self.base, "node1-client.pem")
        make_cert(self.client_pem, ME, issuer=(key, cert))
        with open(server, "rb") as f:
            data = f.read()
        for lib in self.lib.values():
            with open(os.path.join(lib, "server.pem"), "wb") as f:
                f.write(data)
            os.chmod(os.path.join(lib, "server.pem"), 0o600)
        return defer.Deferred.fromCoroutine(self._start())

    def write_ssconf(self, node: str, master: str, *, candidates_certs: str | None = None) -> None:
        lib = self.lib[node]
        with open(os.path.join(lib, "ssconf_master_node"), "w") as f:
            f.write(master + "\n")
        with open(os.path.join(lib, "ssconf_node_list"), "w") as f:
            f.write("".join(n + "\n" for n in NAMES))
        with open(os.path.join(lib, "ssconf_node_primary_ips"), "w") as f:
            f.write("".join(f"{n} {self.ips[n]}\n" for n in NAMES))
        if candidates_certs is not None:
            with open(os.path.join(lib, "ssconf_master_candidates_certs"), "w") as f:
                f.write(candidates_certs)

    async def _start(self) -> None:
        for _ in range(10):
            block = random_block()
            self.ips = {n: f"{block}.{i}" for i, n in enumerate(NAMES, 1)}
            with socket.socket() as s:
                s.bind((self.ips[ME], 0))
                self.port = int(s.getsockname()[1])
            try:
                for n in NAMES:
                    with socket.socket() as s:
                        s.bind((self.ips[n], self.port))
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        for n in NAMES:
            self.write_ssconf(n, ME)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for n in NAMES:
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
            env.update(GANETI_ROOTDIR=self.roots[n], GANETI_HOSTNAME=n)
            out = open(os.path.join(self.base, f"{n}.out"), "wb")
            self.addCleanup(out.close)
            proc = subprocess.Popen(
                [NODED, "-f", "-b", self.ips[n], "-p", str(self.port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.roots[n],
            )
            self.procs[n] = proc
            self.addCleanup(self._stop, proc)
        for n in NAMES:
            await self._wait_listening(n)

    async def _wait_listening(self, node: str) -> None:
        for _ in range(600):  # bounded: 30 s
            if self.procs[node].poll() is not None:
                break
            try:
                with socket.create_connection((self.ips[node], self.port), timeout=1):
                    return
            except OSError:
                await task.deferLater(reactor, 0.05, lambda: None)
        with open(os.path.join(self.base, f"{node}.out")) as f:
            self.fail(f"ganeti-noded for {node} did not start:\n{f.read()}")

    async def _connections_closed(self) -> None:
        """The client closes its connections after the answer; wait (bounded)
        for the close to complete so the reactor is clean."""
        from twisted.internet import tcp

        def open_clients() -> list[Any]:
            return [
                s for s in list(reactor.getReaders()) + list(reactor.getWriters())  # type: ignore[attr-defined]
                if isinstance(s, tcp.Client) and s.getPeer().port == self.port
            ]

        for _ in range(200):
            if not open_clients():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"connections to noded still open: {open_clients()}")

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)

    def config(self) -> DaemonConfig:
        return DaemonConfig.for_tests(
            state_dir=self.base, ssconf_dir=self.lib[ME], noded_cert=self.server_pem,
            noded_port=self.port, hostname=ME, no_voting=False, yes_do_it=False,
        )

    def test_startup_vote_won_then_master_failover_seen_at_run_time(self) -> defer.Deferred[None]:
        async def run() -> None:
            slept: list[float] = []
            m = check_at_startup(self.config(), sleep=slept.append)
            assert m.last is not None
            self.assertEqual(m.last.votes, {ME: 3}, m.last.describe())
            self.assertEqual(slept, [])
            # master failover to node2: the new master rewrites everyone's ssconf
            for n in NAMES:
                self.write_ssconf(n, NAMES[1])
            client = TwistedNodedClient(reactor, NodedTLS.load(self.server_pem), port=self.port, timeout=10)
            tally = await runtime_vote(self.config(), reactor, ME, client=client)()
            self.assertEqual(tally.verdict, Verdict.LOST, tally.describe())
            self.assertEqual(tally.votes, {NAMES[1]: 3})
            await self._connections_closed()

        return defer.Deferred.fromCoroutine(run())

    def test_majority_for_another_node(self) -> None:
        self.write_ssconf(NAMES[1], NAMES[1])
        self.write_ssconf(NAMES[2], NAMES[1])
        with self.assertRaises(NotMasterError) as cm:
            check_at_startup(self.config(), sleep=lambda s: None)
        self.assertIn("node3.example.com->node2.example.com", str(cm.exception))

    def test_client_certificate_rules_of_ganeti(self) -> None:
        # noded accepts only master candidates' client certificates once the
        # cluster has them: server.pem alone is then refused...
        certs = f"uuid-1={ganeti_digest(self.client_pem)}\n"
        for n in NAMES:
            self.write_ssconf(n, ME, candidates_certs=certs)
        with self.assertRaises(NotMasterError) as cm:
            check_at_startup(self.config(), sleep=lambda s: None)
        self.assertIn("undecided", str(cm.exception))
        assert cm.exception.tally is not None
        self.assertEqual(len(cm.exception.tally.missing), 3)
        # ...and the node's own client.pem next to server.pem is what works
        os.rename(self.client_pem, os.path.join(os.path.dirname(self.server_pem), "client.pem"))
        m = check_at_startup(self.config(), sleep=lambda s: None)
        assert m.last is not None
        self.assertEqual(m.last.votes, {ME: 3})
