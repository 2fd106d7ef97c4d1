"""Twisted's memory-BIO TLS protocols without their per-connection interface
copying; shared by the daemon's agent client, the agent and the simulator.

``TLSMemoryBIOProtocol.makeConnection`` calls zope's ``directlyProvides``
once per interface of the TCP transport it wraps.  Each call *replaces* the
previous declaration, so all that remains is the last one
(``ILoggingContext``, which the protocol class implements anyway), after
about ten costly declarations per connection: some 5 % of the CPU of a
daemon round that opens a thousand new agent connections, and as much on
the agents' side.  These subclasses skip that loop and are otherwise
Twisted's own ``makeConnection``: the TLS connection, the handshake and
everything after it are unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.protocols import tls
from twisted.protocols.policies import ProtocolWrapper


class _NoInterfaceCopy:
    """``makeConnection`` of ``TLSMemoryBIOProtocol`` minus the loop."""

    def makeConnection(self: Any, transport: Any) -> None:  # noqa: N802
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer: list[bytes] = []
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()


class ClientTLSProtocol(_NoInterfaceCopy, tls.TLSMemoryBIOProtocol):
    """Each write goes out at once (a client that writes a request in one
    piece needs no aggregation of small writes: one timer fewer)."""


class ServerTLSProtocol(_NoInterfaceCopy, tls.BufferingTLSTransport):
    """Small writes of one reactor turn go out together (an HTTP answer's
    head and body in one TLS record), as with ``listenSSL``."""


class ServerTLSFactory(tls.TLSMemoryBIOFactory):
    """``listenSSL``'s wrapping of a server factory, with
    :class:`ServerTLSProtocol`."""

    protocol = ServerTLSProtocol


def listen_tls(reactor: Any, port: int, factory: Any, options: Any,
               interface: str = "") -> Any:
    """``reactor.listenSSL(port, factory, options, interface=interface)``,
    with :class:`ServerTLSProtocol`."""
    return labelled_tls(reactor.listenTCP(port, ServerTLSFactory(options, False, factory),
                                          interface=interface))


def labelled_tls(port: Any) -> Any:
    """A TCP port that serves :class:`ServerTLSFactory`, labelled TLS as
    ``listenSSL``'s ports are (Twisted's log lines name the type)."""
    port._type = "TLS"
    return port
