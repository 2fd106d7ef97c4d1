"""TLS for RAPI: trust exactly the cluster's own certificate.

Ganeti's ``rapi.pem`` is self-signed with the fixed subject
``CN=ganeti.example.com`` and no subjectAltName, so no host name check can
ever succeed.  Instead the client pins the certificate: the handshake
succeeds only when the server presents that very certificate (compared
byte for byte, DER), whatever host name or address was used to reach it.

``--rapi-insecure`` uses :class:`InsecurePolicy`, which verifies nothing;
the caller logs a warning whenever it is used.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from maintd.cluster.rapi.errors import RapiConfigError

log = Logger()

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s.+?\s-----END CERTIFICATE-----", re.DOTALL
)


def load_certificate(path: str) -> x509.Certificate:
    """The first certificate in PEM file ``path`` (``rapi.pem`` also holds the key).

    Raises :class:`RapiConfigError` naming the file when it cannot be read
    or holds no certificate.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise RapiConfigError(f"cannot read RAPI certificate {path}: {e.strerror}") from e
    match = _PEM_CERT.search(data)
    if not match:
        raise RapiConfigError(f"no PEM certificate in {path}")
    try:
        return x509.load_pem_x509_certificate(match.group(0))
    except ValueError as e:
        raise RapiConfigError(f"bad certificate in {path}: {e}") from e


def _context(verify: SSL._VerifyCallback | None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION)
    if verify is None:
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    else:
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    return ctx


@implementer(IOpenSSLClientConnectionCreator)
class _ConnectionCreator:
    def __init__(self, ctx: SSL.Context, hostname: str) -> None:
        self._ctx = ctx
        self._sni = None
        if hostname and not (isIPAddress(hostname) or isIPv6Address(hostname)):
            self._sni = hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        conn.set_connect_state()
        if self._sni:
            conn.set_tlsext_host_name(self._sni)
        return conn


@implementer(IPolicyForHTTPS)
class PinnedCertificatePolicy:
    """Accept a server only when it presents exactly ``certificate``.

    No host name check (Ganeti's certificate cannot pass one); the leaf
    certificate must equal the pinned one, so neither a different
    self-signed certificate nor one issued by a public CA is accepted.
    """

    def __init__(self, certificate: x509.Certificate, source: str = "",
                 what: str = "RAPI server") -> None:
        self._pinned = certificate.public_bytes(Encoding.DER)
        self.source = source
        self.what = what
        self._ctx = _context(self._verify)

    @classmethod
    def from_file(cls, path: str) -> PinnedCertificatePolicy:
        return cls(load_certificate(path), source=path)

    def _verify(
        self, conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int
    ) -> bool:
        if depth > 0:
            # Intermediate/CA certificates do not matter: the leaf decides.
            return True
        presented = cert.to_cryptography().public_bytes(Encoding.DER)  # type: ignore[attr-defined]
        if presented != self._pinned:
            log.warn(
                "{what} certificate is not the pinned one from {source}",
                what=self.what,
                source=self.source or "<memory>",
            )
            return False
        return True

    def creatorForNetloc(self, hostname: bytes, port: int) -> _ConnectionCreator:
        return _ConnectionCreator(self._ctx, hostname.decode("ascii", "replace"))


@implementer(IPolicyForHTTPS)
class InsecurePolicy:
    """No verification at all (``--rapi-insecure``; labs only)."""

    def __init__(self) -> None:
        self._ctx = _context(None)

    def creatorForNetloc(self, hostname: bytes, port: int) -> _ConnectionCreator:
        return _ConnectionCreator(self._ctx, hostname.decode("ascii", "replace"))
