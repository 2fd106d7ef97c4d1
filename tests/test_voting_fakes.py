"""Fake Ganeti node daemons for the voting tests (no tests in here).

Each :class:`FakeNoded` is a stdlib HTTPS server in its own thread on a
127.x.y.z address: it demands a client certificate signed by (or equal to)
the cluster certificate, like ganeti-noded, and answers
``POST /master_node_name`` with a configurable body.  Threads, not the
reactor, so the blocking startup client (which blocks the reactor thread)
can talk to them too.
"""

from __future__ import annotations

import datetime
import errno
import os
import random
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@attrs.frozen
class CertFile:
    path: str  # key + certificate, like Ganeti's server.pem
    der: bytes


def make_cert(
    path: str, cn: str = "ganeti.example.com", *, issuer: tuple[Any, Any] | None = None, ca: bool = False
) -> tuple[CertFile, Any, Any]:
    """Write key + certificate to ``path``; self-signed unless ``issuer`` (key, cert).
    Like Ganeti's certificates: CN ganeti.example.com.  Ganeti's are X.509 v1,
    which OpenSSL accepts as issuers; ``cryptography`` writes v3, so ``ca``
    adds basicConstraints CA:TRUE to get the same effect."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    sign_key, issuer_name = (key, name) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    cert = builder.sign(sign_key, hashes.SHA256())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + cert.public_bytes(serialization.Encoding.PEM)
    with open(path, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)
    return CertFile(path, cert.public_bytes(serialization.Encoding.DER)), key, cert


class Certs:
    """The cluster certificate, a node client certificate signed by it, and an impostor."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.cluster, key, cert = make_cert(os.path.join(directory, "server.pem"), ca=True)
        self.signed_by_cluster, _, _ = make_cert(
            os.path.join(directory, "node-signed.pem"), "node1.example.com", issuer=(key, cert)
        )
        self.impostor, _, _ = make_cert(os.path.join(directory, "impostor.pem"))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        fake = self.server.fake
        peer = self.connection.getpeercert(binary_form=True) if isinstance(self.connection, ssl.SSLSocket) else None
        with fake.lock:
            fake.requests.append((self.command, self.path, body, peer))
            answer, status = fake.answer, fake.status
        if answer is None:  # hang until the test ends (client times out)
            fake.release.wait(30)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeNoded

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        sock.settimeout(10)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.fake.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            with self.fake.lock:
                self.fake.handshake_failures += 1
            return
        super().finish_request(tls, client_address)


class FakeNoded:
    """One fake node daemon; ``master`` sets the vote, ``answer`` raw bytes, None hangs."""

    def __init__(self, host: str, port: int, server_cert: str, trusted_cert: str) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.requests: list[tuple[str, str, bytes, bytes | None]] = []
        self.handshake_failures = 0
        self.status = 200
        self.answer: bytes | None = b'[true, "node1.example.com"]'
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(server_cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(trusted_cert)
        self.ctx = ctx
        self.server = _Server((host, port), _Handler, bind_and_activate=True)
        self.server.fake = self
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def vote_for(self, master: str) -> None:
        with self.lock:
            self.answer = f'[true, "{master}"]'.encode()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def random_block() -> str:
    """A random 127.a.b prefix, so parallel test processes do not collide."""
    return f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"


def start_nodes(count: int, server_cert: str, trusted_cert: str) -> list[FakeNoded]:
    """``count`` fake nodeds on 127.a.b.1.. sharing one port (noded's port is
    cluster-wide).  Bounded retries on address clashes."""
    for _ in range(20):
        block = random_block()
        nodes: list[FakeNoded] = []
        try:
            first = FakeNoded(f"{block}.1", 0, server_cert, trusted_cert)
            nodes.append(first)
            for i in range(2, count + 1):
                nodes.append(FakeNoded(f"{block}.{i}", first.port, server_cert, trusted_cert))
            return nodes
        except OSError as e:
            for n in nodes:
                n.stop()
            if e.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError("no free 127.x.y block for fake node daemons")


def free_closed_port(host: str = "127.0.0.1") -> int:
    """A port where nothing listens (bound and closed again)."""
    s = socket.socket()
    s.bind((host, 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def write_ssconf(directory: str, nodes: dict[str, str], master: str) -> None:
    """ssconf files for ``nodes`` (name -> primary ip)."""
    with open(os.path.join(directory, "ssconf_node_list"), "w") as f:
        f.write("".join(f"{n}\n" for n in nodes))
    with open(os.path.join(directory, "ssconf_master_node"), "w") as f:
        f.write(master + "\n")
    with open(os.path.join(directory, "ssconf_node_primary_ips"), "w") as f:
        f.write("".join(f"{n} {ip}\n" for n, ip in nodes.items()))
