"""The lean TLS protocols (maintd.common.tlsproto) behave as Twisted's: same
state and interfaces after ``makeConnection``; over real TLS on 127.0.0.1
the daemon's pinned agent client gets its signed report from a server
listening with them, and a server presenting another certificate is refused
before any byte of the request reaches it."""

from __future__ import annotations

import os
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.testing import StringTransport
from twisted.protocols import tls as twisted_tls
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import providedBy

from maintd.agent import diagnose
from maintd.agent.http import tls_options
from maintd.cluster.agent import AgentClient, _PinnedAgents
from maintd.cluster.model import Node
from maintd.common import signing, tlsproto
from maintd.daemon.state import Action
from maintd.sim import tls

KEY = b"0123456789abcdef0123456789abcdef01234567\n"


class _Recorder(protocol.Protocol):
    """Records the plain bytes it receives; answers one GET with ``body``."""

    def connectionMade(self) -> None:  # noqa: N802
        self.got = b""
        self.factory.conns.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.got += data
        if self.got.endswith(b"\r\n\r\n"):
            body = self.factory.body  # type: ignore[attr-defined]
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.factory.lost.callback(self.got)  # type: ignore[attr-defined]


class SameAsTwistedTests(SynchronousTestCase):
    def _connected(self, proto_class: type, is_client: bool) -> Any:
        pem = tls.make_pem(tls.ec_key())
        options = tls_options(pem)
        creator = (ssl.optionsForClientTLS("ganeti.example.com") if is_client else options)
        factory = twisted_tls.TLSMemoryBIOFactory(
            creator, is_client, protocol.Factory.forProtocol(protocol.Protocol))
        factory.protocol = proto_class
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_state_interfaces_and_first_flight_match_twisted(self) -> None:
        for ours, theirs, is_client in (
                (tlsproto.ClientTLSProtocol, twisted_tls.TLSMemoryBIOProtocol, True),
                (tlsproto.ServerTLSProtocol, twisted_tls.BufferingTLSTransport, False)):
            mine, my_transport = self._connected(ours, is_client)
            twisted, their_transport = self._connected(theirs, is_client)
            self.assertTrue(isinstance(mine, theirs))
            # everything Twisted's makeConnection sets up, ours does too
            self.assertEqual(sorted(vars(mine)), sorted(vars(twisted)))
            self.assertEqual(list(providedBy(mine)), list(providedBy(twisted)))
            self.assertIs(mine.wrappedProtocol.transport, mine)
            # a client sends its ClientHello at once, a server waits for it
            self.assertEqual(bool(my_transport.value()), is_client)
            self.assertEqual(bool(their_transport.value()), is_client)


class RealTLSTests(TestCase):
    timeout = 30

    def _serve(self, pem: bytes, body: bytes) -> Any:
        factory = protocol.Factory.forProtocol(_Recorder)
        factory.conns = []  # type: ignore[attr-defined]
        factory.body = body  # type: ignore[attr-defined]
        factory.lost = defer.Deferred()  # type: ignore[attr-defined]
        port = tlsproto.listen_tls(reactor, 0, factory, tls_options(pem), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port, factory

    def _client(self, pinned_pem: bytes, port: int) -> AgentClient:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(pinned_pem)
        c = AgentClient(reactor, key=KEY, port=port, timeout=10.0,
                        tls=_PinnedAgents.from_file(path))
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(c.close()))
        return c

    def test_pinned_agent_answers_over_the_lean_protocols(self) -> defer.Deferred[None]:
        async def t() -> None:
            pem = tls.make_pem(tls.ec_key())
            now = time.time()
            body = signing.dumps(diagnose.report({"status": "Ok"}, now), KEY, now)
            port, factory = self._serve(pem, body)
            c = self._client(pem, port.getHost().port)
            out = await c.gather([Node(name="n1", uuid="n1", group="g", pip="127.0.0.1")],
                                 c.diagnose)
            self.assertEqual(out["n1"].status, Action.OK)
            self.assertEqual(c.verified, 1)
            self.assertIn(b"GET /1/report/node/diagnose HTTP/1.1\r\n", factory.conns[0].got)
            kept = c.pool.take("127.0.0.1", port.getHost().port)
            assert kept is not None
            self.assertIsInstance(kept.transport, tlsproto.ClientTLSProtocol)
            kept.abort()
            await factory.lost  # the server saw the connection end
        return defer.Deferred.fromCoroutine(t())

    def test_another_certificate_gets_no_byte_of_the_request(self) -> defer.Deferred[None]:
        async def t() -> None:
            served = tls.make_pem(ec.generate_private_key(ec.SECP256R1()))
            port, factory = self._serve(served, b"{}")
            c = self._client(tls.make_pem(tls.ec_key()), port.getHost().port)
            out = await c.gather([Node(name="n1", uuid="n1", group="g", pip="127.0.0.1")],
                                 c.diagnose)
            err = out["n1"]
            self.assertEqual(err.outcome, "unreachable")
            self.assertIn("not the pinned one", str(err))
            # the TLS handshake completed (the server got a connection), the
            # client dropped it: the server saw nothing of the request
            self.assertEqual(await factory.lost, b"")
            self.assertEqual(len(factory.conns), 1)
            self.assertEqual(c.verified, 0)
        return defer.Deferred.fromCoroutine(t())
