"""The HTTP API's connection limits (maintd.daemon.httpguard): slow senders and
idle connections are dropped, the connection cap makes room for clients that
send a request, and the API keeps answering while the cap is hit."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.daemon.api import StateAPI
from maintd.daemon.httpguard import HttpLimits
from maintd.daemon.state import MaintState

from .test_core_api import STATE, parse_responses

GET = b"GET /1/status HTTP/1.1\r\nHost: x\r\n\r\n"


class Conn:
    """One client connection to a site, over a StringTransport."""

    def __init__(self, site: Any, port: int) -> None:
        self.proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    def responses(self) -> list[Any]:
        return parse_responses(self.transport.value())

    def close(self) -> None:
        if self.proto.transport is not None:
            self.proto.connectionLost(None)


class LimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.api = StateAPI(STATE)
        self.conns: list[Conn] = []
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def site(self, **limits: Any) -> Any:
        return self.api.site(limits=HttpLimits(**limits), reactor=self.clock)

    def connect(self, site: Any) -> Conn:
        conn = Conn(site, 40000 + len(self.conns))
        self.conns.append(conn)
        self.addCleanup(conn.close)
        return conn

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.logged if e.get("log_namespace") == "maintd.daemon.httpguard"]

    def test_a_header_trickled_byte_by_byte_is_dropped_at_the_deadline(self) -> None:
        site = self.site(header_timeout=5.0)
        slow = self.connect(site)
        for byte in GET[:-2]:
            if self.clock.seconds() >= 4.5:
                break
            slow.send(bytes([byte]))  # every byte resets the idle timer, not this one
            self.clock.advance(0.5)
        self.assertFalse(slow.aborted)
        self.clock.advance(0.5)
        self.assertTrue(slow.aborted)
        self.assertEqual(slow.responses(), [])
        self.assertEqual(site.guard.timed_out, 1)
        self.assertEqual(len(site.guard), 0)

    def test_a_silent_connection_is_dropped_at_the_deadline(self) -> None:
        site = self.site(header_timeout=5.0)
        silent = self.connect(site)
        self.clock.advance(4.9)
        self.assertFalse(silent.aborted)
        self.clock.advance(0.1)
        self.assertTrue(silent.aborted)

    def test_requests_in_time_are_answered_and_keep_alive_until_idle(self) -> None:
        site = self.site(header_timeout=5.0, idle_timeout=60.0)
        for split in (len(GET), 5):  # one packet (the shortcut), then in pieces
            conn = self.connect(site)
            self.clock.advance(4.0)
            conn.send(GET[:split])
            self.clock.advance(0.9)
            conn.send(GET[split:])
            self.clock.advance(4.0)  # past the request deadline: it was met
            self.assertFalse(conn.closing)
            self.assertEqual([c for c, _, _ in conn.responses()], [200])
            self.clock.advance(55.0)  # 59 s idle
            self.assertFalse(conn.closing)
            self.clock.advance(1.0)
            self.assertTrue(conn.closing)
        # no log line per idle or slow connection (Twisted's are at info)
        self.assertEqual([e for e in self.logged if e["log_level"].name != "debug"], [])

    def test_a_body_sent_slowly_is_dropped_too(self) -> None:
        site = self.site(header_timeout=5.0)
        conn = self.connect(site)
        conn.send(b"POST /1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        conn.send(b"x" * 10)
        self.clock.advance(5.0)
        self.assertTrue(conn.aborted)

    def test_at_the_cap_the_least_recently_active_connection_makes_room(self) -> None:
        site = self.site(max_connections=3, header_timeout=None, idle_timeout=None)
        good = self.connect(site)
        good.send(GET)
        slow = [self.connect(site) for _ in range(2)]
        for conn in slow:
            conn.send(b"GET /1/st")
        good.send(GET)  # keeps the well-behaved client at the back of the queue
        newcomer = self.connect(site)  # the 4th: the first slow one goes
        self.assertEqual([c.aborted for c in slow], [True, False])
        newcomer.send(GET)
        self.assertEqual([c for c, _, _ in newcomer.responses()], [200])
        self.assertFalse(good.aborted)
        self.assertEqual(len(site.guard), 3)
        self.assertEqual(site.guard.evicted, 1)

    def test_status_keeps_answering_while_attackers_hold_the_cap(self) -> None:
        site = self.site(max_connections=10, header_timeout=None, idle_timeout=None)
        attackers = [self.connect(site) for _ in range(50)]
        for conn in attackers:
            conn.send(b"GET /")
        for path in (b"/1/status", b"/1/overview", b"/1/jobs"):
            client = self.connect(site)
            for _ in range(5):
                self.connect(site).send(b"GET /")  # more attackers meanwhile
            client.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            ((code, headers, body),) = client.responses()
            self.assertIn(code, (200, 404), path)  # /1/overview: another branch
            self.assertEqual(headers[b"content-type"], b"application/json")
            json.loads(body)
        self.assertEqual(len(site.guard), 10)
        self.assertEqual(sum(c.aborted for c in attackers), 50)

    def test_the_cap_is_logged_once_a_minute_with_a_count(self) -> None:
        site = self.site(max_connections=2, header_timeout=None, idle_timeout=None)
        for _ in range(10):
            self.connect(site)
        warnings = self.warnings()
        self.assertEqual(len(warnings), 1)
        self.assertEqual((warnings[0]["limit"], warnings[0]["count"]), (2, 1))
        self.clock.advance(61)
        self.connect(site)
        warnings = self.warnings()
        self.assertEqual(len(warnings), 2)
        self.assertEqual(warnings[1]["count"], 8)  # 7 unreported + this one
        self.assertEqual(warnings[1]["log_level"].name, "warn")

    def test_debug_mode_has_the_same_limits(self) -> None:
        site = self.api.site(debug=True, limits=HttpLimits(header_timeout=2.0), reactor=self.clock)
        conn = self.connect(site)
        conn.send(b"GET /1/st")
        self.clock.advance(2.0)
        self.assertTrue(conn.aborted)


class _Client(protocol.Protocol):
    def __init__(self, first: bytes) -> None:
        self.first = first
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and self.first == GET:
            head, _, body = self.data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(body) >= length:
                self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class RealSocketTests(TestCase):
    """The limits on a real socket on 127.0.0.1."""

    async def _connect(self, port: int, first: bytes) -> _Client:
        client = _Client(first)
        creator = protocol.ClientCreator(reactor, lambda: client)
        await creator.connectTCP("127.0.0.1", port)
        return client

    def test_slow_senders_are_dropped_and_a_good_client_is_answered(self) -> defer.Deferred[None]:
        api = StateAPI(MaintState())
        site = api.site(limits=HttpLimits(max_connections=8, header_timeout=0.5))
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        async def go() -> None:
            slow = [await self._connect(number, b"GET /1/status HTTP/1.1\r\nHo") for _ in range(20)]
            good = await self._connect(number, GET)
            await good.lost
            self.assertTrue(good.data.startswith(b"HTTP/1.1 200 OK\r\n"), good.data[:80])
            self.assertEqual(json.loads(good.data.partition(b"\r\n\r\n")[2]), [])
            # the cap closed the oldest 13 at once, the deadline the rest
            await defer.gatherResults([c.lost for c in slow])
            self.assertEqual(site.guard.evicted + site.guard.timed_out, 20)
            self.assertGreaterEqual(site.guard.evicted, 13)
            self.assertEqual(len(site.guard), 0)

        return defer.Deferred.fromCoroutine(go())
