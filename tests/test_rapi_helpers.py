"""Shared fixtures for the RAPI tests (no tests here).

``Recorder`` is a ``twisted.web`` resource that records every request
(method, path, query, JSON body, headers) and answers from a script, so a
``StubTreq(recorder)`` lets tests check exactly what the client sends.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, reactor, ssl
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from maintd.sim import tls

DATA = os.path.join(os.path.dirname(__file__), "data", "rapi")


def sample_bytes(name: str) -> bytes:
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def sample(name: str) -> Any:
    return json.loads(sample_bytes(name))


@attrs.define
class Seen:
    method: str
    path: str
    args: dict[str, list[str]]
    body: Any  # parsed JSON, or None when there was no body
    headers: dict[str, str]


#: An answer: (status, body bytes), or NOT_DONE_YET to never answer.
Answer = tuple[int, bytes] | object


class Recorder(Resource):
    """Answers ``routes[(method, path)]`` (a list consumed in order, the
    last one repeating, or a callable of the request) and records requests."""

    isLeaf = True

    def __init__(self, routes: dict[tuple[str, str], Any] | None = None) -> None:
        super().__init__()
        self.routes: dict[tuple[str, str], Any] = routes or {}
        self.seen: list[Seen] = []
        self.pending: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode()
        path = request.path.decode()
        raw = request.content.read() if request.content else b""
        self.seen.append(
            Seen(
                method=method,
                path=path,
                args={k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
                body=json.loads(raw) if raw else None,
                headers={
                    **{
                        k.decode().lower(): v[0].decode()
                        for k, v in request.requestHeaders.getAllRawHeaders()
                    },
                    # which connection (client port) carried the request
                    "x-peer": str(getattr(request.getClientAddress(), "port", "")),
                },
            )
        )
        route = self.routes.get((method, path))
        if route is None:
            request.setResponseCode(404)
            return sample_bytes("err-404-node.json")
        if callable(route):
            answer = route(request)
        elif isinstance(route, list):
            answer = route.pop(0) if len(route) > 1 else route[0]
        else:
            answer = route
        if answer is NOT_DONE_YET:
            self.pending.append(request)
            return NOT_DONE_YET
        status, body = answer  # type: ignore[misc]
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return body


def ok(doc: Any) -> tuple[int, bytes]:
    return (200, json.dumps(doc).encode())


def ok_sample(name: str) -> tuple[int, bytes]:
    return (200, sample_bytes(name))


def err_sample(status: int, name: str) -> tuple[int, bytes]:
    return (status, sample_bytes(name))


def read_routes() -> dict[tuple[str, str], Any]:
    """Routes answering every read with the real Ganeti 3.0 samples."""
    return {
        ("GET", "/version"): ok_sample("version.json"),
        ("GET", "/2/features"): ok_sample("features.json"),
        ("GET", "/2/info"): ok_sample("info.json"),
        ("GET", "/2/nodes"): ok_sample("nodes-bulk.json"),
        ("GET", "/2/groups"): ok_sample("groups-bulk.json"),
        ("GET", "/2/instances"): ok_sample("instances-bulk.json"),
        ("GET", "/2/tags"): ok_sample("cluster-tags.json"),
        ("GET", "/2/nodes/node1.sandbox.test/tags"): ok_sample("node-tags.json"),
        ("GET", "/2/jobs"): ok_sample("jobs-bulk.json"),
        ("GET", "/2/jobs/20"): ok_sample("job-success.json"),
        ("GET", "/2/jobs/27"): ok_sample("job-node-drain-master.json"),
        ("GET", "/2/jobs/999999"): ok_sample("err-404-job.json"),
    }


def run_until(clock: Any, d: Any, step: float = 1.0, limit: int = 1000) -> None:
    """Advance ``clock`` until Deferred ``d`` has fired (bounded)."""
    for _ in range(limit):
        if d.called:
            return
        clock.advance(step)
    raise AssertionError("Deferred did not fire")


Callback = Callable[[Request], Answer]


def make_rapi_pem(path: str) -> None:
    """A Ganeti-style rapi.pem (key + self-signed certificate) at ``path``, with its own key."""
    tls.write_pem(path, key=ec.generate_private_key(ec.SECP256R1()))


class AuthRecorder(Recorder):
    """Recorder that answers 401 (Ganeti's body) unless basic auth matches."""

    def __init__(self, user: str, password: str) -> None:
        super().__init__(read_routes())
        self.expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode())

    def render(self, request: Any) -> Any:
        if request.getHeader(b"authorization") != self.expected:
            request.setResponseCode(401)
            return err_sample(401, "err-401.json")[1]
        return super().render(request)


class _TrackedChannel(HTTPChannel):
    def connectionLost(self, reason: Any) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.site.lost(self)


class ClosingSite(Site):
    """A Site whose open connections :meth:`close_all` aborts and waits for.

    A client that rejects the server's certificate leaves the server side of
    the TLS connection open for a moment; without this the test could end
    before it closes (a dirty reactor, now and then, under load).
    """

    protocol = _TrackedChannel

    def __init__(self, resource: Any) -> None:
        super().__init__(resource)
        self.open: dict[HTTPChannel, defer.Deferred[None]] = {}

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        channel = super().buildProtocol(addr)
        self.open[channel] = defer.Deferred()
        return channel

    def lost(self, channel: HTTPChannel) -> None:
        waiter = self.open.pop(channel, None)
        if waiter is not None:
            waiter.callback(None)

    def close_all(self) -> defer.Deferred[Any]:
        waits = list(self.open.values())
        for channel in list(self.open):
            if channel.transport is not None:
                channel.transport.abortConnection()
        return defer.gatherResults(waits)


class LocalHTTPSRapi:
    """Mixin for trial TestCases: an HTTPS RAPI on 127.0.0.1 serving the
    samples with basic auth (maintd / s3cret) and a Ganeti-style rapi.pem;
    ``other_pem`` is a second, different certificate."""

    def setUp(self) -> None:
        self.dir = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(self.dir)
        self.server_pem = os.path.join(self.dir, "rapi.pem")
        self.other_pem = os.path.join(self.dir, "other.pem")
        make_rapi_pem(self.server_pem)
        make_rapi_pem(self.other_pem)
        self.pwfile = os.path.join(self.dir, "password")
        with open(self.pwfile, "w") as f:
            f.write("s3cret\n")
        os.chmod(self.pwfile, 0o600)
        with open(self.server_pem) as f:
            options = ssl.PrivateCertificate.loadPEM(f.read()).options()
        self.resource = AuthRecorder("maintd", "s3cret")
        site = ClosingSite(self.resource)
        self.port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)  # type: ignore[attr-defined]
        self.addCleanup(site.close_all)  # type: ignore[attr-defined]  # runs first
        self.url = f"https://127.0.0.1:{self.port.getHost().port}"

