"""Client of the agents' state replicas: ``PUT``/``GET /1/replica`` on each node.

Same transport rules as the agents' reports (:mod:`maintd.cluster.agent`):
the node's primary IP and the agent port, TLS pinned to the cluster
certificate (plain HTTP with ``--agent-plain-http``), a timeout per request.
Errors are :class:`ReplicaError` naming the node; the caller logs them.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import defer

from maintd.cluster.model import Node
from maintd.common import strictjson

PATH = "/1/replica"
MAX_BODY = 16 * 1024 * 1024


class ReplicaError(Exception):
    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"replica on the agent of {node}: {message}")
        self.node = node


class ReplicaClient:
    def __init__(self, reactor: Any, *, port: int, timeout: float = 10.0,
                 policy: Any = None, http: Any = None) -> None:
        """``policy``: an ``IPolicyForHTTPS`` (TLS) or None (plain HTTP);
        ``http``: a treq-like client (tests: ``StubTreq``)."""
        self.reactor = reactor
        self.port = port
        self.timeout = timeout
        self.scheme = "http" if policy is None else "https"
        if http is None:
            from twisted.web.client import Agent, HTTPConnectionPool

            kwargs: dict[str, Any] = {"pool": HTTPConnectionPool(reactor, persistent=False),
                                      "connectTimeout": timeout}
            if policy is not None:
                kwargs["contextFactory"] = policy
            http = treq.client.HTTPClient(Agent(reactor, **kwargs))
        self.http = http

    @classmethod
    def create(cls, reactor: Any, *, port: int, cert: str | None,
               timeout: float = 10.0) -> ReplicaClient:
        """TLS pinned to certificate file ``cert`` (None: plain HTTP)."""
        policy = None
        if cert is not None:
            from maintd.cluster.rapi.tls import PinnedCertificatePolicy

            policy = PinnedCertificatePolicy.from_file(cert)
            policy.what = "node agent"
        return cls(reactor, port=port, timeout=timeout, policy=policy)

    def url(self, node: Node) -> str:
        if not node.pip:
            raise ReplicaError(node.name, "node has no primary IP")
        host = f"[{node.pip}]" if ":" in node.pip else node.pip
        return f"{self.scheme}://{host}:{self.port}{PATH}"

    async def _request(self, node: Node, method: str, data: bytes | None) -> tuple[int, bytes]:
        url = self.url(node)
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if data is not None:
            kwargs["data"] = data
            kwargs["headers"] = {b"Content-Type": [b"application/json"]}
        try:
            response = await self.http.request(method, url, **kwargs)
            body = await response.content()
        except defer.CancelledError:
            raise ReplicaError(node.name, f"no answer from {url} within {self.timeout:g}s") \
                from None
        except Exception as e:  # refused, TLS, reset
            raise ReplicaError(node.name, f"cannot reach {url}: {e}") from None
        if len(body) > MAX_BODY:
            raise ReplicaError(node.name, f"answer from {url} is larger than {MAX_BODY} bytes")
        return response.code, body

    async def put(self, node: Node, envelope: bytes) -> int | None:
        """Send a signed replica: None when stored, else the (same or newer)
        serial the agent keeps instead."""
        code, body = await self._request(node, "PUT", envelope)
        if code == 200:
            return None
        if code == 409:
            try:
                kept = strictjson.loads(body, self.url(node), max_bytes=4096).get("kept")
            except (strictjson.StrictJSONError, AttributeError):
                kept = None
            if isinstance(kept, int) and not isinstance(kept, bool):
                return kept
        text = body[:200].decode("utf-8", "replace").strip()
        raise ReplicaError(node.name, f"PUT answered HTTP {code}: {text}")

    async def get(self, node: Node) -> bytes | None:
        """The agent's signed replica, None when it has none."""
        code, body = await self._request(node, "GET", None)
        if code == 404:
            return None
        if code != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise ReplicaError(node.name, f"GET answered HTTP {code}: {text}")
        return body
