"""The noded clients and the startup check against fake TLS node daemons on 127.x.y.z."""

from __future__ import annotations

import io
import os
from typing import Any

import attrs
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.cluster.voting import (
    EXIT_NODESETUP_ERROR,
    EXIT_NOTMASTER,
    BlockingNodedClient,
    NodedTLS,
    NotMasterError,
    SetupError,
    Tally,
    TwistedNodedClient,
    Verdict,
)
from maintd.daemon.config import DaemonConfig
from maintd.daemon.mastership import check_at_startup, check_at_startup_or_exit

from .test_voting_fakes import Certs, FakeNoded, free_closed_port, start_nodes, write_ssconf

ME = "node1.example.com"
OTHER = "node2.example.com"


class _Fixture:
    def make(self, test: Any, count: int, server_cert: str | None = None) -> None:
        self.dir = test.mktemp()
        os.makedirs(self.dir)
        self.certs = Certs(self.dir)
        self.nodes = start_nodes(count, server_cert or self.certs.cluster.path, self.certs.cluster.path)
        for n in self.nodes:
            test.addCleanup(n.stop)
        self.names = [f"node{i + 1}.example.com" for i in range(count)]
        self.endpoints: dict[str, tuple[str, int] | str | None] = {
            name: (n.host, n.port) for name, n in zip(self.names, self.nodes, strict=True)
        }


class BlockingClientTests(SynchronousTestCase, _Fixture):
    def setUp(self) -> None:
        self.make(self, 3)
        self.client = BlockingNodedClient(NodedTLS.load(self.certs.cluster.path), timeout=5)

    def test_asks_every_node_with_post_and_the_cluster_certificate(self) -> None:
        for n in self.nodes:
            n.vote_for(ME)
        result = self.client.gather(self.endpoints)
        self.assertEqual([b.master for b in result], [ME] * 3)
        for n in self.nodes:
            self.assertEqual(len(n.requests), 1)
            method, path, body, peer = n.requests[0]
            self.assertEqual((method, path, body), ("POST", "/master_node_name", b"[]"))
            self.assertEqual(peer, self.certs.cluster.der)

    def test_client_pem_next_to_server_pem_is_the_client_certificate(self) -> None:
        os.rename(self.certs.signed_by_cluster.path, os.path.join(self.dir, "client.pem"))
        client = BlockingNodedClient(NodedTLS.load(self.certs.cluster.path), timeout=5)
        client.gather({self.names[0]: self.endpoints[self.names[0]]})
        self.assertEqual(self.nodes[0].requests[0][3], self.certs.signed_by_cluster.der)

    def test_garbage_and_errors_count_as_missing(self) -> None:
        self.nodes[0].vote_for(ME)
        self.nodes[1].answer = b"<html>oops</html>"
        self.nodes[2].answer = b'[false, "backend failure"]'
        result = self.client.gather(self.endpoints)
        self.assertEqual(result[0].master, ME)
        self.assertIsNone(result[1].master)
        self.assertIn("not JSON", result[1].error or "")
        self.assertIsNone(result[2].master)
        self.assertIn("backend failure", result[2].error or "")

    def test_http_error_counts_as_missing(self) -> None:
        self.nodes[0].status = 500
        result = self.client.gather({self.names[0]: self.endpoints[self.names[0]]})
        self.assertIsNone(result[0].master)
        self.assertIn("HTTP 500", result[0].error or "")

    def test_unreachable_and_unresolved_count_as_missing(self) -> None:
        result = self.client.gather({"gone.example.com": ("127.0.0.1", free_closed_port()),
                                     "noaddr.example.com": None})
        self.assertEqual([b.master for b in result], [None, None])
        self.assertIn("cannot connect", result[0].error or "")
        self.assertIn("gone.example.com", result[0].error or "")
        self.assertEqual(result[1].error, "no address")

    def test_silent_node_times_out_as_missing(self) -> None:
        self.nodes[0].answer = None
        client = BlockingNodedClient(NodedTLS.load(self.certs.cluster.path), timeout=0.5)
        result = client.gather({self.names[0]: self.endpoints[self.names[0]]})
        self.assertIsNone(result[0].master)
        self.assertIn("request failed", result[0].error or "")


class WrongCertificateTests(SynchronousTestCase, _Fixture):
    """A node presenting another certificate than the pinned cluster one is missing."""

    def test_impostor_with_the_same_name(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        # the impostor's cert has CN=ganeti.example.com too: only the pin tells them apart
        certs = Certs(self.dir)
        nodes = start_nodes(1, certs.impostor.path, certs.cluster.path)
        self.addCleanup(nodes[0].stop)
        nodes[0].vote_for(ME)
        client = BlockingNodedClient(NodedTLS.load(certs.cluster.path), timeout=5)
        result = client.gather({"node1.example.com": (nodes[0].host, nodes[0].port)})
        self.assertIsNone(result[0].master)
        self.assertIn("TLS failure", result[0].error or "")
        self.assertEqual(nodes[0].requests, [])

    def test_certificate_signed_by_the_cluster_certificate_is_not_enough(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        certs = Certs(self.dir)
        nodes = start_nodes(1, certs.signed_by_cluster.path, certs.cluster.path)
        self.addCleanup(nodes[0].stop)
        nodes[0].vote_for(ME)
        client = BlockingNodedClient(NodedTLS.load(certs.cluster.path), timeout=5)
        result = client.gather({"node1.example.com": (nodes[0].host, nodes[0].port)})
        self.assertIsNone(result[0].master)
        self.assertIn("another certificate", result[0].error or "")
        self.assertEqual(nodes[0].requests, [])


class TwistedClientTests(TestCase, _Fixture):
    def setUp(self) -> None:
        self.make(self, 3)
        self.client = TwistedNodedClient(reactor, NodedTLS.load(self.certs.cluster.path), timeout=5)

    @defer.inlineCallbacks
    def test_votes_and_missing(self) -> Any:
        self.nodes[0].vote_for(ME)
        self.nodes[1].vote_for(OTHER)
        self.nodes[2].answer = b"garbage"
        endpoints = dict(self.endpoints)
        endpoints["gone.example.com"] = ("127.0.0.1", free_closed_port())
        result = yield defer.Deferred.fromCoroutine(self.client.gather(endpoints))
        self.assertEqual([b.master for b in result], [ME, OTHER, None, None])
        self.assertIn("not JSON", result[2].error or "")
        method, path, body, peer = self.nodes[0].requests[0]
        self.assertEqual((method, path, body, peer), ("POST", "/master_node_name", b"[]", self.certs.cluster.der))
        tally = Tally(ME, tuple(result))
        self.assertEqual(tally.verdict, Verdict.UNDECIDED)  # 1 of 4 + 2 missing could reach 3

    @defer.inlineCallbacks
    def test_wrong_certificates_count_as_missing(self) -> Any:
        impostor = FakeNoded(self.nodes[0].host, 0, self.certs.impostor.path, self.certs.cluster.path)
        self.addCleanup(impostor.stop)
        signed = FakeNoded(self.nodes[0].host, 0, self.certs.signed_by_cluster.path, self.certs.cluster.path)
        self.addCleanup(signed.stop)
        for n in (impostor, signed):
            n.vote_for(ME)
        result = yield defer.Deferred.fromCoroutine(self.client.gather({
            "a.example.com": (impostor.host, impostor.port),
            "b.example.com": (signed.host, signed.port),
        }))
        self.assertEqual([b.master for b in result], [None, None])
        for b in result:
            self.assertIn("TLS failure", b.error or "")
        self.assertEqual(impostor.requests + signed.requests, [])


class StartupCheckTests(SynchronousTestCase, _Fixture):
    """check_at_startup: ssconf -> vote over the fake nodeds -> Mastership or exit."""

    def setUp(self) -> None:
        self.make(self, 3)
        self.ssconf = os.path.join(self.dir, "ssconf")
        os.makedirs(self.ssconf)
        write_ssconf(self.ssconf, {name: n.host for name, n in zip(self.names, self.nodes, strict=True)}, ME)
        self.slept: list[float] = []
        self.config = DaemonConfig.for_tests(
            state_dir=self.dir, ssconf_dir=self.ssconf, noded_cert=self.certs.cluster.path,
            noded_port=self.nodes[0].port, hostname=ME, no_voting=False, yes_do_it=False,
        )

    def check(self, **overrides: Any) -> Any:
        config = attrs.evolve(self.config, **overrides) if overrides else self.config
        return check_at_startup(config, sleep=self.slept.append)

    def test_majority_for_us_starts(self) -> None:
        self.nodes[0].vote_for(ME)
        self.nodes[1].vote_for(ME)
        self.nodes[2].vote_for(OTHER)
        m = self.check()
        self.assertTrue(m.verified and m.is_master)
        assert m.last is not None
        self.assertEqual(m.last.in_favor, 2)
        self.assertEqual(self.slept, [])

    def test_majority_for_another_node_exits_11(self) -> None:
        self.nodes[0].vote_for(ME)
        self.nodes[1].vote_for(OTHER)
        self.nodes[2].vote_for(OTHER)
        err = io.StringIO()
        with self.assertRaises(SystemExit) as cm:
            check_at_startup_or_exit(self.config, stderr=err, sleep=self.slept.append)
        self.assertEqual(cm.exception.code, EXIT_NOTMASTER)
        self.assertIn("node2.example.com->node2.example.com", err.getvalue())
        self.assertIn("node3.example.com->node2.example.com", err.getvalue())
        self.assertIn("1 of 3 nodes voted for node1.example.com", err.getvalue())
        self.assertEqual(self.slept, [])

    def test_too_few_answers_retry_then_exit_11(self) -> None:
        self.nodes[0].vote_for(ME)
        self.nodes[1].answer = b"not json"
        self.nodes[2].stop()
        err = io.StringIO()
        with self.assertRaises(SystemExit) as cm:
            check_at_startup_or_exit(self.config, stderr=err, sleep=self.slept.append)
        self.assertEqual(cm.exception.code, EXIT_NOTMASTER)
        self.assertEqual(self.slept, [10.0] * 6)
        self.assertEqual(len(self.nodes[0].requests), 7)
        self.assertIn("undecided after 7 attempts", err.getvalue())
        self.assertEqual(err.getvalue().count("asking again in 10s"), 6, err.getvalue())
        self.assertIn("(retry 6/6)", err.getvalue())
        self.assertIn("node2.example.com (node node2.example.com: answer is not JSON", err.getvalue())
        self.assertIn("node3.example.com (", err.getvalue())

    def test_missing_answers_arriving_later_win(self) -> None:
        self.nodes[0].vote_for(ME)
        self.nodes[1].answer = b"[]"
        self.nodes[2].answer = b"[]"

        def sleep(s: float) -> None:
            self.slept.append(s)
            self.nodes[1].vote_for(ME)

        m = check_at_startup(self.config, sleep=sleep)
        self.assertTrue(m.is_master)
        self.assertEqual(self.slept, [10.0])

    def test_ssconf_naming_another_master_exits_11_without_asking(self) -> None:
        write_ssconf(self.ssconf, {name: n.host for name, n in zip(self.names, self.nodes, strict=True)}, OTHER)
        err = io.StringIO()
        with self.assertRaises(SystemExit) as cm:
            check_at_startup_or_exit(self.config, stderr=err, sleep=self.slept.append)
        self.assertEqual(cm.exception.code, EXIT_NOTMASTER)
        self.assertIn("names node2.example.com", err.getvalue())
        self.assertEqual(sum(len(n.requests) for n in self.nodes), 0)

    def test_missing_ssconf_or_certificate_exits_12(self) -> None:
        for config in (attrs.evolve(self.config, ssconf_dir=os.path.join(self.dir, "nope")),
                       attrs.evolve(self.config, noded_cert=os.path.join(self.dir, "nope.pem"))):
            err = io.StringIO()
            with self.assertRaises(SystemExit) as cm:
                check_at_startup_or_exit(config, stderr=err, sleep=self.slept.append)
            self.assertEqual(cm.exception.code, EXIT_NODESETUP_ERROR)
            self.assertIn("nope", err.getvalue())

    def test_no_voting_and_simulate_skip_the_vote(self) -> None:
        for overrides in ({"no_voting": True, "yes_do_it": True}, {"simulate": True}):
            m = self.check(**overrides)
            self.assertFalse(m.verified)
            self.assertTrue(m.is_master)
        self.assertEqual(sum(len(n.requests) for n in self.nodes), 0)

    def test_not_master_error_carries_the_tally(self) -> None:
        for n in self.nodes:
            n.vote_for(OTHER)
        with self.assertRaises(NotMasterError) as cm:
            self.check()
        assert cm.exception.tally is not None
        self.assertEqual(cm.exception.tally.votes, {OTHER: 3})

    def test_no_voting_needs_yes_do_it(self) -> None:
        from twisted.python import usage

        from maintd.daemon.options import Options

        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(["--no-voting", "--state-dir", self.dir])
        self.assertIn("--yes-do-it", str(cm.exception))
        opts = Options()
        opts.parseOptions(["--no-voting", "--yes-do-it", "--state-dir", self.dir])
        m = check_at_startup(opts.daemon_config, sleep=self.slept.append)
        self.assertFalse(m.verified)
        self.assertEqual(sum(len(n.requests) for n in self.nodes), 0)

    def test_make_service_votes_and_wires_the_rounds(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from maintd.daemon import tap

        for n in self.nodes:
            n.vote_for(ME)
        top = tap.makeService(self.config, reactor=MemoryReactorClock())
        self.addCleanup(top.store.close)
        self.assertTrue(top.mastership.verified)
        self.assertIsNotNone(top.getServiceNamed("mastership"))
        runner = top.rounds.round_fn
        self.assertTrue(runner.context(1).submitting)
        top.mastership.mark_lost(None)
        self.assertFalse(runner.context(2).submitting)

    def test_make_service_exits_11_when_not_master(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from maintd.daemon import tap

        for n in self.nodes:
            n.vote_for(OTHER)
        reactor = MemoryReactorClock()
        with self.assertRaises(SystemExit) as cm:
            tap.makeService(self.config, reactor=reactor)
        self.assertEqual(cm.exception.code, EXIT_NOTMASTER)
        self.assertEqual(reactor.tcpServers, [], "no port bound")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "state.json")))

    def test_setup_error_type(self) -> None:
        self.assertRaises(SetupError, check_at_startup, attrs.evolve(self.config, ssconf_dir="/nonexistent"))
