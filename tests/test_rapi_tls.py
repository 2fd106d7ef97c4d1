"""RapiClient.create against a real local HTTPS server on 127.0.0.1.

Certificates are generated like Ganeti's ``rapi.pem``: self-signed,
``CN=ganeti.example.com``, no subjectAltName, key and certificate in one
file.  The client must accept exactly the pinned one.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from maintd.cluster.rapi.client import RapiClient
from maintd.cluster.rapi.errors import (
    RapiAuthError,
    RapiConfigError,
    RapiConnectionError,
    RapiTimeout,
    RapiTLSError,
)
from tests.test_rapi_helpers import LocalHTTPSRapi


class TLSTests(LocalHTTPSRapi, TestCase):
    def client(self, **kw: Any) -> RapiClient:
        kw.setdefault("user", "maintd")
        kw.setdefault("password_file", self.pwfile)
        kw.setdefault("cert", self.server_pem)
        kw.setdefault("timeout", 10)
        url = kw.pop("url", self.url)
        c = RapiClient.create(url, reactor=reactor, **kw)
        c.retry_base = 0.01
        self.addCleanup(lambda: Deferred.fromCoroutine(c.close()))
        return c

    async def test_pinned_certificate_accepted(self) -> None:
        c = self.client()
        info = await c.info()
        self.assertEqual(info["name"], "cluster.sandbox.test")
        cluster = await c.load_cluster()
        self.assertEqual(len(cluster.instances), 6)

    async def test_different_certificate_rejected(self) -> None:
        c = self.client(cert=self.other_pem)
        with self.assertRaises(RapiTLSError) as cm:
            await c.info()
        self.assertIn("pinned", str(cm.exception))
        # the request never reached the server's application
        self.assertEqual(self.resource.seen, [])

    async def test_insecure_accepts_any_and_warns(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        c = self.client(cert=self.other_pem, insecure=True)
        self.assertEqual(await c.version(), 2)
        warned = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertTrue(any("rapi-insecure" in e["log_format"] for e in warned))

    async def test_bad_password_is_auth_error(self) -> None:
        with open(self.pwfile, "w") as f:
            f.write("wrong\n")
        c = self.client()
        with self.assertRaises(RapiAuthError) as cm:
            await c.info()
        self.assertIn("401", str(cm.exception))

    def test_world_readable_password_file_refused(self) -> None:
        os.chmod(self.pwfile, 0o644)
        with self.assertRaises(RapiConfigError) as cm:
            self.client()
        self.assertIn(self.pwfile, str(cm.exception))
        self.assertIn("0644", str(cm.exception))

    def test_missing_certificate_file(self) -> None:
        missing = os.path.join(self.dir, "nope.pem")
        with self.assertRaises(RapiConfigError) as cm:
            self.client(cert=missing)
        self.assertIn(missing, str(cm.exception))

    def test_user_without_password_file(self) -> None:
        self.assertRaises(RapiConfigError, self.client, password_file=None)

    async def test_from_daemon_config(self) -> None:
        from maintd.daemon.config import DaemonConfig

        config = DaemonConfig.for_tests(
            state_dir=self.dir, rapi=self.url, rapi_user="maintd",
            rapi_password_file=self.pwfile, rapi_cert=self.server_pem, rapi_insecure=False,
        )
        c = RapiClient.from_config(config, reactor)
        self.addCleanup(lambda: Deferred.fromCoroutine(c.close()))
        self.assertEqual(c.timeout, config.rapi_timeout)
        self.assertEqual((await c.load_cluster()).name, "cluster.sandbox.test")
        other = DaemonConfig.for_tests(
            state_dir=self.dir, rapi=self.url, rapi_user="maintd",
            rapi_password_file=self.pwfile, rapi_cert=self.other_pem, rapi_insecure=False,
        )
        c2 = RapiClient.from_config(other, reactor)
        self.addCleanup(lambda: Deferred.fromCoroutine(c2.close()))
        with self.assertRaises(RapiTLSError):
            await c2.info()

    async def test_persistent_connection_reused(self) -> None:
        c = self.client()
        for _ in range(3):
            await c.version()
        self.assertEqual(len({s.headers.get("x-peer") for s in self.resource.seen}), 1)

    async def test_connection_refused(self) -> None:
        port = self.port.getHost().port
        await self.port.stopListening()
        c = self.client(url=f"https://127.0.0.1:{port}", read_retries=1)
        with self.assertRaises(RapiConnectionError) as cm:
            await c.info()
        self.assertNotIsInstance(cm.exception, RapiTLSError)
        self.assertIn(f"127.0.0.1:{port}", str(cm.exception))


class Truncating(protocol.Protocol):
    """Answers any request with a body shorter than its Content-Length."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 500\r\n\r\n{\"name\": \"clus"
            )
            self.transport.loseConnection()


class Silent(protocol.Protocol):
    """Accepts the connection and never answers."""


class RawServerTests(TestCase):
    def listen(self, proto: type[protocol.Protocol]) -> str:
        factory = protocol.Factory.forProtocol(proto)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    def client(self, url: str, **kw: Any) -> RapiClient:
        c = RapiClient.create(url, reactor=reactor, **kw)
        self.addCleanup(lambda: Deferred.fromCoroutine(c.close()))
        return c

    async def test_truncated_body(self) -> None:
        c = self.client(self.listen(Truncating), read_retries=0)
        with self.assertRaises(RapiConnectionError) as cm:
            await c.info()
        self.assertIn("truncated", str(cm.exception))

    async def test_server_never_answers(self) -> None:
        # the outcome does not depend on timing: the server never answers
        c = self.client(self.listen(Silent), timeout=0.2)
        with self.assertRaises(RapiTimeout):
            await c.info()
