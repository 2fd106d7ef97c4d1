"""The agent client's connections, driven by hand on a MemoryReactorClock:
kept between rounds, a kept one found closed retried once, timeouts counted
as unreachable, a node whose TLS handshake never completes does not hold up
the others, and the HTTP/1.1 reader's framing and bounds."""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import crypto
from twisted.internet import defer, protocol, task
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.agent import diagnose
from maintd.cluster import keepalive
from maintd.cluster.agent import AgentClient, AgentError, _Deadline, _PinnedAgents
from maintd.cluster.model import Node
from maintd.common import signing
from maintd.daemon.state import Action
from maintd.sim import tls

KEY = b"0123456789abcdef0123456789abcdef01234567\n"
NOW = 1_800_000_000.0
PATH = b"/1/report/node/diagnose"


def node(name: str, ip: str) -> Node:
    return Node(name=name, uuid=name, group="g", pip=ip)


def signed(status: str = "Ok") -> bytes:
    return signing.dumps(diagnose.report({"status": status}, NOW), KEY, NOW)


def answer(body: bytes, *, close: bool = False, version: bytes = b"HTTP/1.1") -> bytes:
    head = b"%s 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        version, len(body))
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


class _Handle:
    def __init__(self, cert: Any) -> None:
        self.cert = cert

    def get_peer_certificate(self) -> Any:
        return self.cert


class TLSTransport(StringTransport):
    """A connected transport whose TLS peer presented ``cert``."""

    def __init__(self, cert: Any) -> None:
        super().__init__()
        self.handle = _Handle(cert)

    def getHandle(self) -> Any:  # noqa: N802
        return self.handle


class Harness:
    """A client on a MemoryReactorClock; connections are made by hand."""

    def __init__(self, test: SynchronousTestCase, *, tls_on: bool = False, **kw: Any) -> None:
        self.test = test
        self.reactor = MemoryReactorClock()
        self.pinned = None
        if tls_on:
            pem = tls.make_pem(tls.ec_key())
            path = test.mktemp()
            with open(path, "wb") as f:
                f.write(pem)
            agents = _PinnedAgents.from_file(path)
            self.pinned = crypto.X509.from_cryptography(
                crypto.load_certificate(crypto.FILETYPE_PEM, pem).to_cryptography())
            kw["tls"] = agents
        self.client = AgentClient(self.reactor, key=KEY, port=1817, timeout=2.0,
                                  wallclock=lambda: NOW, **kw)

    def gather(self, nodes: list[Node]) -> defer.Deferred[dict[str, Any]]:
        return defer.Deferred.fromCoroutine(self.client.gather(nodes, self.client.diagnose))

    def attempts(self) -> list[tuple[str, Any]]:
        """(host, factory) of every connection attempt so far."""
        # over TLS: the client's own factory inside Twisted's TLS one (driven
        # here without TLS: the handshake is announced by hand)
        return [(c[0], getattr(c[2], "wrappedFactory", c[2])) for c in self.reactor.tcpClients]

    def connect(self, index: int, *, handshake: bool = True) -> tuple[Any, StringTransport]:
        """Make connection attempt ``index``; its protocol and transport."""
        host, factory = self.attempts()[index]
        proto = factory.buildProtocol(None)
        transport: StringTransport = (TLSTransport(self.pinned) if self.pinned is not None
                                      else StringTransport())
        proto.makeConnection(transport)
        if self.pinned is not None and handshake:
            proto.handshakeCompleted()
        return proto, transport


class KeptConnectionTests(SynchronousTestCase):
    def test_second_round_uses_the_kept_connection(self) -> None:
        h = Harness(self)
        d = h.gather([node("n1", "10.0.0.1")])
        (proto, transport), = [h.connect(0)]
        self.assertTrue(transport.value().startswith(b"GET " + PATH + b" HTTP/1.1\r\n"))
        proto.dataReceived(answer(signed("evacuate")))
        report = self.successResultOf(d)["n1"]
        self.assertEqual(report.status, Action.EVACUATE)
        self.assertEqual(len(h.client.pool), 1)
        self.assertFalse(transport.disconnecting)
        # next round: the request goes over the same connection
        transport.clear()
        d = h.gather([node("n1", "10.0.0.1")])
        self.assertEqual(len(h.attempts()), 1, "no new connection")
        self.assertTrue(transport.value().startswith(b"GET " + PATH))
        # an answer in two pieces, chunked this time
        body = signed()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           + b"%x\r\n%s\r\n" % (10, body[:10]))
        self.assertNoResult(d)
        proto.dataReceived(b"%x;ext=1\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (len(body) - 10,
                                                                           body[10:]))
        self.assertEqual(self.successResultOf(d)["n1"].status, Action.OK)
        self.assertEqual((h.client.pool.reused, h.client.pool.opened), (1, 1))
        self.assertEqual(h.client.counters.totals()["ok"], 2)

    def test_a_kept_connection_found_closed_is_retried_once(self) -> None:
        h = Harness(self)
        d = h.gather([node("n1", "10.0.0.1")])
        proto, transport = h.connect(0)
        proto.dataReceived(answer(signed()))
        self.successResultOf(d)
        # the agent restarted: the kept connection is closed when the next
        # round's request goes out, before any answer
        d = h.gather([node("n1", "10.0.0.1")])
        self.assertNoResult(d)
        proto.connectionLost(Failure(ConnectionRefusedError("reset")))
        self.assertEqual(len(h.attempts()), 2, "retried on a new connection")
        proto2, _ = h.connect(1)
        proto2.dataReceived(answer(signed()))
        self.assertEqual(self.successResultOf(d)["n1"].status, Action.OK)
        self.assertEqual(h.client.pool.retried, 1)
        self.assertEqual(h.client.counters.snapshot()["n1"],
                         {"ok": 2, "unreachable": 0, "invalid": 0, "bad_signature": 0,
                          "collector_failed": 0})
        # once only: the new connection failing too is an unreachable node
        proto2.connectionLost(Failure(ConnectionRefusedError("reset")))
        self.assertEqual(len(h.client.pool), 0, "a closed connection is not kept")
        d = h.gather([node("n1", "10.0.0.1")])
        self.assertEqual(len(h.attempts()), 3)
        h.attempts()[2][1].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        err = self.successResultOf(d)["n1"]
        self.assertIsInstance(err, AgentError)
        self.assertEqual(err.outcome, "unreachable")
        self.assertIn("cannot reach", str(err))

    def test_a_kept_connection_closed_after_part_of_the_answer_is_not_retried(self) -> None:
        h = Harness(self)
        d = h.gather([node("n1", "10.0.0.1")])
        proto, _ = h.connect(0)
        proto.dataReceived(answer(signed()))
        self.successResultOf(d)
        d = h.gather([node("n1", "10.0.0.1")])
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{")
        proto.connectionLost(Failure(ConnectionRefusedError("reset")))
        err = self.successResultOf(d)["n1"]
        self.assertEqual(err.outcome, "unreachable")
        self.assertEqual((len(h.attempts()), h.client.pool.retried), (1, 0))

    def test_timeouts_are_unreachable_and_the_connection_is_dropped(self) -> None:
        h = Harness(self)
        nodes = [node("n1", "10.0.0.1"), node("n2", "10.0.0.2")]
        d = h.gather(nodes)
        kept = [h.connect(i) for i in range(2)]
        for proto, _ in kept:
            proto.dataReceived(answer(signed()))
        self.successResultOf(d)
        self.assertEqual(len(h.client.pool), 2)
        # n2's agent hangs on the kept connection; n1 answers
        d = h.gather(nodes)
        kept[0][0].dataReceived(answer(signed()))
        h.reactor.advance(1.9)
        self.assertNoResult(d)
        h.reactor.advance(0.1)
        out = self.successResultOf(d)
        self.assertEqual(out["n1"].status, Action.OK)
        self.assertEqual(out["n2"].outcome, "unreachable")
        self.assertIn("within 2s", str(out["n2"]))
        self.assertTrue(kept[1][1].disconnected, "the hung connection is aborted")
        self.assertEqual(len(h.client.pool), 1, "and not kept")
        self.assertEqual(h.client.counters.snapshot()["n2"]["unreachable"], 1)

    def test_a_connection_that_never_completes_is_given_up_at_the_timeout(self) -> None:
        h = Harness(self)
        d = h.gather([node("n1", "10.0.0.1")])
        self.assertIsNone(h.reactor.tcpClients[0][3], "no connect timer of Twisted's own")
        h.reactor.advance(2)  # SYN unanswered (node powered off)
        err = self.successResultOf(d)["n1"]
        self.assertEqual(err.outcome, "unreachable")
        self.assertIn("within 2s", str(err))
        self.assertEqual(h.reactor.connectors[0].stoppedConnecting, True)

    def test_each_idle_connection_expires_on_its_own_time(self) -> None:
        h = Harness(self, idle_timeout=60)
        for i, ip in enumerate(("10.0.0.1", "10.0.0.2")):
            if i:
                h.reactor.advance(30)  # n0 kept at 0 s, n1 at 30 s
            d = h.gather([node(f"n{i}", ip)])
            proto, _ = h.connect(i)
            proto.dataReceived(answer(signed()))
            self.successResultOf(d)
        self.assertEqual(len(h.client.pool), 2)
        h.reactor.advance(30)  # 60 s: n0 expires, n1 stays
        self.assertEqual(len(h.client.pool), 1)
        self.assertIsNotNone(h.client.pool.take("10.0.0.2", 1817))
        self.assertIsNone(h.client.pool.take("10.0.0.1", 1817))
        self.assertEqual(len(h.reactor.getDelayedCalls()), 1, "one sweep timer")

    def test_connection_close_and_http_1_0_answers_are_not_kept(self) -> None:
        h = Harness(self)
        nodes = [node("n1", "10.0.0.1"), node("n2", "10.0.0.2")]
        d = h.gather(nodes)
        (p1, t1), (p2, t2) = h.connect(0), h.connect(1)
        p1.dataReceived(answer(signed(), close=True))
        p2.dataReceived(answer(signed(), version=b"HTTP/1.0"))
        out = self.successResultOf(d)
        self.assertTrue(all(r.status == Action.OK for r in out.values()))
        self.assertTrue(t1.disconnecting and t2.disconnecting)
        self.assertEqual(len(h.client.pool), 0)

    def test_idle_connections_expire_and_close_closes_them(self) -> None:
        h = Harness(self, idle_timeout=60)
        d = h.gather([node("n1", "10.0.0.1"), node("n2", "10.0.0.2")])
        kept = [h.connect(i) for i in range(2)]
        for proto, _ in kept:
            proto.dataReceived(answer(signed()))
        self.successResultOf(d)
        h.reactor.advance(59)
        self.assertEqual(len(h.client.pool), 2)
        h.reactor.advance(1)
        self.assertEqual(len(h.client.pool), 0)
        self.assertTrue(all(t.disconnecting for _, t in kept))
        # close() waits for the kept connections to be closed
        d = h.gather([node("n1", "10.0.0.1")])
        proto, transport = h.connect(2)
        proto.dataReceived(answer(signed()))
        self.successResultOf(d)
        closed = defer.Deferred.fromCoroutine(h.client.close())
        self.assertNoResult(closed)
        self.assertTrue(transport.disconnected, "aborted: a stopping daemon waits for no agent")
        proto.connectionLost(Failure(ConnectionRefusedError("closed")))
        self.successResultOf(closed)
        self.assertEqual(h.reactor.getDelayedCalls(), [])


class HandshakeTests(SynchronousTestCase):
    def test_a_hung_handshake_does_not_hold_up_the_others(self) -> None:
        # two handshake slots; the first two nodes accept TCP and never
        # complete the TLS handshake (a hung agent)
        h = Harness(self, tls_on=True, handshakes=2)
        self.assertEqual(h.client.stall, 0.5)
        nodes = [node("hung1", "10.0.0.1"), node("hung2", "10.0.0.2"),
                 node("n3", "10.0.0.3"), node("n4", "10.0.0.4")]
        d = h.gather(nodes)
        self.assertEqual([a[0] for a in h.attempts()], ["10.0.0.1", "10.0.0.2"])
        self.assertTrue(all(isinstance(c[2], TLSMemoryBIOFactory) for c in h.reactor.tcpClients),
                        "over TLS")
        h.connect(0, handshake=False)
        h.connect(1, handshake=False)
        # after 'stall' seconds the hung handshakes give their slots away and
        # keep waiting for their own timeout
        h.reactor.advance(0.5)
        self.assertEqual([a[0] for a in h.attempts()][2:], ["10.0.0.3", "10.0.0.4"])
        for i in (2, 3):
            proto, transport = h.connect(i)
            self.assertIn(b"GET " + PATH, transport.value(), "sent after the handshake")
            proto.dataReceived(answer(signed()))
        self.assertNoResult(d)
        # the hung nodes time out 2 s after they were asked; n3 and n4 long answered
        h.reactor.advance(1.5)
        out = self.successResultOf(d)
        self.assertEqual((out["n3"].status, out["n4"].status), (Action.OK, Action.OK))
        for name in ("hung1", "hung2"):
            self.assertEqual(out[name].outcome, "unreachable")
            self.assertIn("within 2s", str(out[name]))

    def test_a_node_reached_late_still_gets_half_its_timeout(self) -> None:
        # one handshake slot; four agents that never complete the handshake
        # (each gives the slot away after 0.5 s): n5's connection starts at 2 s
        h = Harness(self, tls_on=True, handshakes=1)
        nodes = [node(f"h{i}", f"10.0.0.{i}") for i in range(1, 5)] + [node("n5", "10.0.0.5")]
        d = h.gather(nodes)
        for i in range(4):
            self.assertEqual(len(h.attempts()), i + 1)
            h.connect(i, handshake=False)
            h.reactor.advance(0.5)
        self.assertEqual(len(h.attempts()), 5, "n5's connection starts at 2 s")
        p5, _ = h.connect(4, handshake=False)
        # the silent ones time out 2 s after they were asked (h4: 1 s after
        # its connection started at 1.5 s)
        out: dict[str, Any] = {}
        d.addCallback(out.update)
        h.reactor.advance(0.4)
        p5.handshakeCompleted()  # at 2.4 s: n5's request goes out
        h.reactor.advance(0.9)  # 3.3 s: more than its 2 s timeout since it was asked
        self.assertNoResult(d)
        p5.dataReceived(answer(signed()))
        self.assertEqual(out["n5"].status, Action.OK, "not cut short by our own queue")
        for name in ("h1", "h2", "h3", "h4"):
            self.assertEqual(out[name].outcome, "unreachable")

    def test_a_node_silent_after_a_late_start_costs_half_its_timeout(self) -> None:
        h = Harness(self, tls_on=True, handshakes=1)
        d = h.gather([node("h1", "10.0.0.1"), node("n2", "10.0.0.2")])
        p1, _ = h.connect(0, handshake=False)
        h.reactor.advance(1.5)  # h1 gives its slot away at 0.5 s: n2 starts
        p2, _ = h.connect(1)  # n2's request goes out at 1.5 s; it never answers
        h.reactor.advance(0.5)  # h1 times out at 2 s
        self.assertNoResult(d)
        h.reactor.advance(0.5)  # n2 at 1.5 + 1 s
        out = self.successResultOf(d)
        self.assertEqual((out["h1"].outcome, out["n2"].outcome), ("unreachable", "unreachable"))
        self.assertIn("within 2s", str(out["n2"]))

    def test_answers_are_checked_once_no_node_waits_for_a_handshake(self) -> None:
        h = Harness(self, tls_on=True, handshakes=1)
        d = h.gather([node(f"n{i}", f"10.0.0.{i}") for i in (1, 2, 3)])
        p1, _ = h.connect(0)  # n1's handshake is done: n2 gets the slot, n3 waits
        forged = signing.dumps(diagnose.report({"status": "evacuate"}, NOW), b"forged\n", NOW)
        p1.dataReceived(answer(forged))
        self.assertEqual(h.client.verified, 0, "n3 still waits for a handshake slot")
        h.reactor.advance(0.4)
        p2, _ = h.connect(1)  # n3 gets the slot: nobody waits any more
        self.assertEqual(h.client.verified, 1, "n1's answer checked now")
        p3, _ = h.connect(2)
        for p in (p2, p3):
            p.dataReceived(answer(signed()))
        out = self.successResultOf(d)
        self.assertEqual(out["n1"].outcome, "bad_signature")
        self.assertEqual((out["n2"].status, out["n3"].status), (Action.OK, Action.OK))

    def test_a_request_cancelled_while_its_check_waits(self) -> None:
        h = Harness(self, tls_on=True, handshakes=1)
        c = h.client
        ds = [defer.Deferred.fromCoroutine(c.diagnose(node(f"n{i}", f"10.0.0.{i}")))
              for i in (1, 2, 3)]
        p1, _ = h.connect(0)
        p1.dataReceived(answer(signed()))
        ds[0].cancel()  # e.g. the daemon stops while n1's answer waits to be checked
        self.failureResultOf(ds[0], defer.CancelledError)
        p2, _ = h.connect(1)  # n3 gets its slot: the waiting checks are released
        p3, _ = h.connect(2)
        for p in (p2, p3):
            p.dataReceived(answer(signed()))
        self.assertEqual([self.successResultOf(d).status for d in ds[1:]], [Action.OK] * 2)

    def test_another_certificate_is_refused_before_the_request(self) -> None:
        h = Harness(self, tls_on=True)
        d = h.gather([node("n1", "10.0.0.1")])
        other = tls.make_pem(ec.generate_private_key(ec.SECP256R1()))
        _, factory = h.attempts()[0]
        proto = factory.buildProtocol(None)
        transport = TLSTransport(crypto.load_certificate(crypto.FILETYPE_PEM, other))
        proto.makeConnection(transport)
        proto.handshakeCompleted()
        self.assertEqual(transport.value(), b"", "nothing sent to a wrong agent")
        self.assertTrue(transport.disconnected)
        err = self.successResultOf(d)["n1"]
        self.assertEqual(err.outcome, "unreachable")
        self.assertIn("not the pinned one", str(err))


class DeadlineTests(SynchronousTestCase):
    """A node's timeout: from when it is asked, at least ``grace`` after each
    step of its request; its one timer is moved only when that is later."""

    def test_expires_at_the_later_of_timeout_and_grace(self) -> None:
        clock = task.Clock()
        expired: list[float] = []
        d = _Deadline(clock, 2.0, 1.0)
        d.start(lambda: expired.append(clock.seconds()))
        (call,) = clock.getDelayedCalls()
        clock.advance(0.5)
        d.progress()  # 0.5 + 1 is before 2: nothing to move
        self.assertEqual(clock.getDelayedCalls(), [call])
        self.assertAlmostEqual(call.getTime(), 2.0)
        clock.advance(1.3)
        d.progress()  # 1.8 + 1 is after 2: the same timer, later
        self.assertEqual(clock.getDelayedCalls(), [call])
        self.assertAlmostEqual(call.getTime(), 2.8)
        clock.advance(0.9)
        self.assertEqual(expired, [])
        clock.advance(0.1)
        self.assertEqual(len(expired), 1)
        self.assertAlmostEqual(expired[0], 2.8)

    def test_held_while_waiting_for_a_slot(self) -> None:
        clock = task.Clock()
        expired: list[float] = []
        d = _Deadline(clock, 2.0, 1.0)
        d.start(lambda: expired.append(clock.seconds()))
        d.hold()
        clock.advance(3.0)  # past its timeout, but waiting on our side
        self.assertEqual(expired, [])
        d.progress()  # its connection starts at 3 s: one grace more
        clock.advance(0.9)
        self.assertEqual(expired, [])
        clock.advance(0.1)
        self.assertEqual(len(expired), 1)
        self.assertAlmostEqual(expired[0], 4.0)


class ReaderTests(SynchronousTestCase):
    """keepalive.Connection's framing and bounds."""

    def conn(self, max_body: int = 1000) -> tuple[keepalive.Connection, StringTransport,
                                                   defer.Deferred[tuple[int, bytes]]]:
        c = keepalive.Connection(b"h", max_body)
        d = c.first_request(b"/x")
        t = StringTransport()
        c.makeConnection(t)
        return c, t, d

    def test_close_delimited_body(self) -> None:
        c, t, d = self.conn()
        c.dataReceived(b"HTTP/1.1 404 Not Found\r\n\r\nno such")
        c.dataReceived(b" thing")
        self.assertNoResult(d)
        c.connectionLost(Failure(ConnectionRefusedError("done")))
        self.assertEqual(self.successResultOf(d), (404, b"no such thing"))
        self.assertFalse(c.reusable)

    def test_interim_answer_is_skipped(self) -> None:
        c, t, d = self.conn()
        c.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.successResultOf(d), (200, b"ok"))
        self.assertTrue(c.reusable)

    def test_bounds(self) -> None:
        cases = {
            "body": (b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n", keepalive.TooLarge),
            "chunks": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n",
                       keepalive.TooLarge),
            "close": (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1001, keepalive.TooLarge),
            "head": (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 4000, keepalive.BadResponse),
            "chunk line": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           + b"1" * 2000, keepalive.BadResponse),
            "garbage": (b"SSH-2.0-OpenSSH\r\n\r\n", keepalive.BadResponse),
            "length": (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                       keepalive.BadResponse),
            "encoding": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                         keepalive.BadResponse),
        }
        for what, (data, kind) in cases.items():
            c, t, d = self.conn()
            c.dataReceived(data)
            self.failureResultOf(d, kind)
            self.assertTrue(t.disconnected, what)
            self.assertFalse(c.reusable, what)

    def test_unasked_data_and_extra_bytes_drop_the_connection(self) -> None:
        c, t, d = self.conn()
        c.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200")
        self.assertEqual(self.successResultOf(d), (200, b"ok"))
        self.assertFalse(c.reusable)
        c, t, d = self.conn()
        c.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(c.reusable)
        c.dataReceived(b"surprise")
        self.assertTrue(t.disconnected)


class _Flaky(protocol.Protocol):
    """Answers each request with keep-alive, except the second one on its
    connection: that one it drops unanswered (an agent restarting or closing
    an idle connection just as the request arrives)."""

    def connectionMade(self) -> None:  # noqa: N802
        self.factory.connections += 1  # type: ignore[attr-defined]
        self.seen = 0
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.seen += 1
            assert self.transport is not None
            if self.seen == 2:
                self.transport.loseConnection()
                return
            self.transport.write(answer(self.factory.body))  # type: ignore[attr-defined]


class RealSocketTests(TestCase):
    def test_a_kept_connection_closed_as_the_request_arrives_is_retried(self) -> defer.Deferred[None]:
        async def t() -> None:
            from twisted.internet import reactor

            factory = protocol.Factory.forProtocol(_Flaky)
            factory.connections = 0  # type: ignore[attr-defined]
            factory.body = signing.dumps(  # type: ignore[attr-defined]
                diagnose.report({"status": "Ok"}, time.time()), KEY, time.time())
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(port.stopListening)
            c = AgentClient(reactor, key=KEY, port=port.getHost().port, timeout=5.0)
            self.addCleanup(lambda: defer.Deferred.fromCoroutine(c.close()))
            n = node("n1", "127.0.0.1")
            for _ in range(2):
                out = await c.gather([n], c.diagnose)
                self.assertEqual(out["n1"].status, Action.OK)
            self.assertEqual((c.pool.reused, c.pool.retried, c.pool.opened), (1, 1, 2))
            self.assertEqual(factory.connections, 2)  # type: ignore[attr-defined]
            self.assertEqual(c.counters.snapshot()["n1"]["unreachable"], 0)
        return defer.Deferred.fromCoroutine(t())
