"""Self-signed RAPI certificate like Ganeti's ``rapi.pem`` (CN=ganeti.example.com).

The file holds the private key and the certificate, as Ganeti's does; clients
pin the certificate from it.  The RSA key is generated once per process (key
generation dominates the cost and tests start many simulators).
"""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CN = "ganeti.example.com"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_KEY: rsa.RSAPrivateKey | None = None


def _key() -> rsa.RSAPrivateKey:
    global _KEY
    if _KEY is None:
        _KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEY


_EC_KEY: ec.EllipticCurvePrivateKey | None = None


def ec_key() -> ec.EllipticCurvePrivateKey:
    """The process's P-256 key (the simulated agents' certificate: a thousand
    simulated nodes' TLS handshakes cost one process far less with ECDSA)."""
    global _EC_KEY
    if _EC_KEY is None:
        _EC_KEY = ec.generate_private_key(ec.SECP256R1())
    return _EC_KEY


def make_pem(key: PrivateKey | None = None) -> bytes:
    """PEM text: private key followed by a fresh self-signed certificate.

    ``key`` defaults to the process's RSA key; pass a new one for a
    certificate with a key of its own (tests of certificate pinning).
    """
    key = key or _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CN)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=5 * 365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def write_pem(path: str, key: PrivateKey | None = None) -> bytes:
    """Write a new key+certificate file (mode 0600) and return its content."""
    pem = make_pem(key)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return pem
