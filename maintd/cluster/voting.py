"""Master verification by vote, the way Ganeti's daemons do it.

Every node's node daemon (``ganeti-noded``, HTTPS port 1811) is asked
``POST /master_node_name`` with the JSON body ``[]`` and answers
``[true, "<master fqdn>"]``.  This host is the master when more than half of
*all* nodes name it.  While missing answers could still change the outcome
the vote is repeated (6 times, 10 s apart); when it is lost or can no longer
be won the daemon exits with status 11 (Ganeti's ``EXIT_NOTMASTER``).

This module has three layers:

* pure counting: :class:`Ballot`, :class:`Tally`, :func:`parse_master_answer`,
  :func:`verify_by_vote` (the retry schedule, with injected ``sleep``);
* the node list from Ganeti's ssconf files (:func:`read_ssconf`);
* two noded clients with the same TLS rules (client certificate = the
  cluster's node certificate, the server must present exactly the pinned
  cluster certificate ``server.pem``; no host name check — Ganeti's
  certificate names ``ganeti.example.com`` on every node):
  :class:`BlockingNodedClient` (stdlib ``ssl``/``http.client`` in threads, for
  the startup check that runs before the reactor) and
  :class:`TwistedNodedClient` (treq over an ``Agent`` with
  :class:`PinnedNodedPolicy`, for the periodic re-check).
"""

from __future__ import annotations

import enum
import http.client
import ipaddress
import os
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from maintd.common import strictjson

log = Logger()

EXIT_NOTMASTER = 11
"""Ganeti's ``constants.EXIT_NOTMASTER``: this host is not the master."""
EXIT_NODESETUP_ERROR = 12
"""Ganeti's ``constants.EXIT_NODESETUP_ERROR``: ssconf/certificates unusable."""

VOTING_RETRIES = 6
"""Ganeti's ``masterVotingRetries``: repeats after the first undecided vote."""
VOTING_RETRY_INTERVAL = 10.0
"""Ganeti's ``masterVotingRetryIntervall`` in seconds."""
NODED_TIMEOUT = 10.0
"""Per-node timeout (connect + answer) of one vote, seconds."""
MASTER_NODE_NAME_PATH = "/master_node_name"
MAX_ANSWER_BYTES = 64 * 1024

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class VotingError(Exception):
    """Base of the errors of the voting boundary."""


class SetupError(VotingError):
    """ssconf files, certificates or the own host name are unusable (exit 12)."""


class NodedError(VotingError):
    """One node daemon gave no usable vote (connection, TLS, HTTP, garbage)."""


class NotMasterError(VotingError):
    """The vote is lost or cannot be won (exit 11); ``tally`` has the votes."""

    def __init__(self, message: str, tally: Tally | None = None) -> None:
        super().__init__(message)
        self.tally = tally


def normalize_name(name: str) -> str:
    """Host names compare case-insensitively and without a trailing dot."""
    return name.strip().rstrip(".").lower()


def is_valid_hostname(name: str) -> bool:
    return bool(_HOSTNAME_RE.match(name))


# --------------------------------------------------------------------------
# pure counting


class Verdict(enum.Enum):
    WON = "won"
    UNDECIDED = "undecided"  # missing answers could still change the outcome
    LOST = "lost"  # lost, or cannot be won even if every missing node voted for us


@attrs.frozen
class Ballot:
    """One node's answer: ``master`` it names, or ``None`` with ``error``."""

    node: str
    master: str | None
    error: str | None = None

    @classmethod
    def missing(cls, node: str, error: str) -> Ballot:
        return cls(node=node, master=None, error=error)


@attrs.frozen
class Tally:
    """The result of one vote among all ``ballots`` (one per known node)."""

    me: str
    ballots: tuple[Ballot, ...]

    @property
    def voters(self) -> int:
        return len(self.ballots)

    @property
    def in_favor(self) -> int:
        me = normalize_name(self.me)
        return sum(1 for b in self.ballots if b.master is not None and normalize_name(b.master) == me)

    @property
    def missing(self) -> tuple[Ballot, ...]:
        return tuple(b for b in self.ballots if b.master is None)

    @property
    def votes(self) -> dict[str, int]:
        """Valid votes per named master (normalised names), most votes first."""
        counts = Counter(normalize_name(b.master) for b in self.ballots if b.master is not None)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def verdict(self) -> Verdict:
        # Ganeti's verifyMasterVotes: strict majority of *all* nodes.
        if 2 * self.in_favor > self.voters:
            return Verdict.WON
        if 2 * (self.in_favor + len(self.missing)) > self.voters:
            return Verdict.UNDECIDED
        return Verdict.LOST

    def describe(self) -> str:
        """One line naming who voted for whom and who did not answer."""
        parts = [
            f"{self.in_favor} of {self.voters} nodes voted for {self.me}"
            f" (more than {self.voters // 2} needed)"
        ]
        if self.votes:
            parts.append("votes: " + ", ".join(f"{m}={n}" for m, n in self.votes.items()))
        answered = [b for b in self.ballots if b.master is not None]
        if answered:
            parts.append("ballots: " + ", ".join(f"{b.node}->{b.master}" for b in answered))
        if self.missing:
            parts.append(
                "no valid answer from: " + ", ".join(f"{b.node} ({b.error})" for b in self.missing)
            )
        return "; ".join(parts)


def parse_master_answer(node: str, body: bytes) -> str:
    """The master name in a noded answer ``[true, "<fqdn>"]``; else :class:`NodedError`."""
    try:
        value = strictjson.loads(body, f"node {node}", max_bytes=MAX_ANSWER_BYTES, max_depth=8)
    except strictjson.StrictJSONError as e:
        raise NodedError(f"node {node}: answer is not JSON: {e.problem}") from None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], bool)):
        raise NodedError(f"node {node}: answer is not [status, payload]: {body[:80]!r}")
    ok, payload = value
    if not ok:
        raise NodedError(f"node {node}: noded reports failure: {str(payload)[:200]}")
    if not isinstance(payload, str) or not is_valid_hostname(payload):
        raise NodedError(f"node {node}: master name is not a host name: {payload!r:.80}")
    return payload


def verify_by_vote(
    gather: Callable[[], Sequence[Ballot]],
    me: str,
    *,
    retries: int = VOTING_RETRIES,
    interval: float = VOTING_RETRY_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[Tally, int], None] | None = None,
) -> Tally:
    """Vote until decided: return the winning :class:`Tally` or raise :class:`NotMasterError`.

    Blocking; ``gather`` asks every node once.  An undecided vote is repeated
    ``retries`` times, ``interval`` seconds apart (``sleep`` is injected;
    ``on_retry(tally, attempt)`` is told before each wait).
    """
    attempt = 0
    while True:
        tally = Tally(me=me, ballots=tuple(gather()))
        verdict = tally.verdict
        if verdict is Verdict.WON:
            return tally
        if verdict is Verdict.LOST:
            raise NotMasterError(f"master vote lost by {me}: {tally.describe()}", tally)
        if attempt >= retries:
            raise NotMasterError(
                f"master vote undecided after {attempt + 1} attempts, too many nodes did"
                f" not answer: {tally.describe()}",
                tally,
            )
        attempt += 1
        log.warn(
            "master vote undecided ({tally}), retry {attempt}/{retries} in {interval}s",
            tally=tally.describe(),
            attempt=attempt,
            retries=retries,
            interval=interval,
        )
        if on_retry is not None:
            on_retry(tally, attempt)
        sleep(interval)


# --------------------------------------------------------------------------
# ssconf


@attrs.frozen
class NodeList:
    """What ssconf says: all node names, the master, and node -> address."""

    nodes: tuple[str, ...]
    master: str | None
    addresses: Mapping[str, str] = attrs.field(factory=dict)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f.read(4 * 1024 * 1024).splitlines() if line.strip()]


def read_ssconf(ssconf_dir: str) -> NodeList:
    """Read ``ssconf_node_list``, ``ssconf_master_node`` and (if present)
    ``ssconf_node_primary_ips`` (lines ``name ip``) from ``ssconf_dir``."""
    list_path = os.path.join(ssconf_dir, "ssconf_node_list")
    try:
        names = _read_lines(list_path)
    except OSError as e:
        raise SetupError(f"cannot read the node list {list_path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SetupError(f"node list {list_path} is not text: {e}") from None
    bad = [n for n in names if not is_valid_hostname(n)]
    if bad:
        raise SetupError(f"node list {list_path} has invalid node names: {bad[:5]}")
    if not names:
        raise SetupError(f"node list {list_path} is empty")
    nodes = tuple(dict.fromkeys(names))

    master: str | None = None
    master_path = os.path.join(ssconf_dir, "ssconf_master_node")
    try:
        lines = _read_lines(master_path)
    except (OSError, UnicodeDecodeError):
        lines = []
    if lines and is_valid_hostname(lines[0]):
        master = lines[0]

    addresses: dict[str, str] = {}
    ips_path = os.path.join(ssconf_dir, "ssconf_node_primary_ips")
    try:
        ip_lines = _read_lines(ips_path)
    except (OSError, UnicodeDecodeError):
        ip_lines = []
    for line in ip_lines:
        fields = line.split()
        if len(fields) != 2:
            log.warn("ignoring malformed line in {path}: {line!r}", path=ips_path, line=line)
            continue
        name, ip = fields
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            log.warn("ignoring bad address of {name} in {path}: {ip!r}", name=name, path=ips_path, ip=ip)
            continue
        addresses[name] = ip
    return NodeList(nodes=nodes, master=master, addresses=addresses)


def node_address(
    nodes: NodeList, node: str, resolve: Callable[[str], str] = socket.gethostbyname
) -> str:
    """The address to reach ``node``'s noded at: ssconf primary IP, else DNS."""
    ip = nodes.addresses.get(node)
    if ip is not None:
        return ip
    try:
        return resolve(node)
    except OSError as e:
        raise NodedError(f"node {node}: cannot resolve: {e}") from None


# --------------------------------------------------------------------------
# TLS material


@attrs.frozen
class NodedTLS:
    """The cluster certificate to pin and the client certificate+key file."""

    pinned_der: bytes
    pinned_pem: str
    client_cert_file: str
    cert_file: str

    @classmethod
    def load(cls, cert_file: str, client_cert_file: str | None = None) -> NodedTLS:
        """Load ``cert_file`` (Ganeti's ``server.pem``: key and certificate).

        The client certificate is ``client_cert_file``, else ``client.pem`` next
        to ``cert_file`` when it exists (since Ganeti 2.11 noded accepts the
        master candidates' own client certificates, signed by ``server.pem``),
        else ``cert_file`` itself (what Ganeti does without ``client.pem``).
        """
        try:
            with open(cert_file, "rb") as f:
                data = f.read(1024 * 1024)
        except OSError as e:
            raise SetupError(f"cannot read the node certificate {cert_file}: {e.strerror or e}") from None
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise SetupError(f"no PEM certificate in {cert_file}: {e}") from None
        cert = certs[0]
        if client_cert_file is None:
            candidate = os.path.join(os.path.dirname(cert_file), "client.pem")
            client_cert_file = candidate if os.path.exists(candidate) else cert_file
        return cls(
            pinned_der=cert.public_bytes(serialization.Encoding.DER),
            pinned_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            client_cert_file=client_cert_file,
            cert_file=cert_file,
        )

    def stdlib_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # every node presents the same cluster certificate
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.pinned_pem)
        try:
            ctx.load_cert_chain(self.client_cert_file)
        except (OSError, ssl.SSLError) as e:
            raise SetupError(f"cannot load the client certificate {self.client_cert_file}: {e}") from None
        return ctx

    def openssl_context(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        try:
            ctx.use_certificate_chain_file(self.client_cert_file)
            ctx.use_privatekey_file(self.client_cert_file)
        except SSL.Error as e:
            raise SetupError(f"cannot load the client certificate {self.client_cert_file}: {e}") from None
        store = ctx.get_cert_store()
        assert store is not None
        store.add_cert(crypto.X509.from_cryptography(x509.load_der_x509_certificate(self.pinned_der)))
        pinned = self.pinned_der

        def verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
            # OpenSSL checked signature and dates against the pinned root;
            # the peer's own certificate must moreover be exactly the pinned one.
            if not ok:
                return False
            if depth == 0:
                return bool(cert.to_cryptography().public_bytes(serialization.Encoding.DER) == pinned)
            return True

        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return ctx


# --------------------------------------------------------------------------
# blocking client (startup, before the reactor runs)


class BlockingNodedClient:
    """Ask nodes for their master with stdlib ``ssl``; one thread per node."""

    def __init__(
        self, tls: NodedTLS, *, port: int = 1811, timeout: float = NODED_TIMEOUT, parallel: int = 32
    ) -> None:
        self._ctx = tls.stdlib_context()
        self._pinned = tls.pinned_der
        self._port = port
        self._timeout = timeout
        self._parallel = parallel

    def ask(self, node: str, address: str, port: int | None = None) -> str:
        """The master named by ``node``'s noded at ``address``; :class:`NodedError` else."""
        conn = http.client.HTTPSConnection(
            address, port or self._port, timeout=self._timeout, context=self._ctx
        )
        try:
            try:
                conn.connect()
            except ssl.SSLError as e:
                raise NodedError(f"node {node} ({address}): TLS failure: {e.reason or e}") from None
            except OSError as e:
                raise NodedError(f"node {node} ({address}): cannot connect: {e.strerror or e}") from None
            sock = conn.sock
            if not isinstance(sock, ssl.SSLSocket) or sock.getpeercert(binary_form=True) != self._pinned:
                raise NodedError(f"node {node} ({address}): presents another certificate than the cluster's")
            try:
                conn.request(
                    "POST", MASTER_NODE_NAME_PATH, body=b"[]",
                    headers={"Content-Type": "application/json"},
                )
                resp = conn.getresponse()
                body = resp.read(MAX_ANSWER_BYTES)
            except (OSError, http.client.HTTPException) as e:
                raise NodedError(f"node {node} ({address}): request failed: {e}") from None
            if resp.status != 200:
                raise NodedError(f"node {node} ({address}): HTTP {resp.status} {resp.reason}")
            return parse_master_answer(node, body)
        finally:
            conn.close()

    def gather(self, endpoints: Mapping[str, tuple[str, int] | str | None]) -> list[Ballot]:
        """Ask every node concurrently; ``endpoints`` maps node -> address, (address, port),
        or None (unresolvable: counted as missing).  All threads are joined before returning."""

        def one(node: str) -> Ballot:
            ep = endpoints[node]
            if ep is None:
                return Ballot.missing(node, "no address")
            address, port = ep if isinstance(ep, tuple) else (ep, None)
            try:
                return Ballot(node=node, master=self.ask(node, address, port))
            except NodedError as e:
                return Ballot.missing(node, str(e))
            except Exception as e:  # whatever a node does, it is only a missing vote
                return Ballot.missing(node, f"node {node} ({address}): {type(e).__name__}: {e}")

        nodes = list(endpoints)
        if not nodes:
            return []
        with ThreadPoolExecutor(max_workers=min(self._parallel, len(nodes))) as pool:
            return list(pool.map(one, nodes))


def resolve_endpoints(
    nodes: NodeList, resolve: Callable[[str], str] = socket.gethostbyname
) -> dict[str, tuple[str, int] | str | None]:
    """node -> address for :meth:`BlockingNodedClient.gather` (None when unresolvable)."""
    out: dict[str, tuple[str, int] | str | None] = {}
    for node in nodes.nodes:
        try:
            out[node] = node_address(nodes, node, resolve)
        except NodedError as e:
            log.warn("{error}", error=str(e))
            out[node] = None
    return out


# --------------------------------------------------------------------------
# Twisted client (periodic re-check while the reactor runs)


@implementer(IPolicyForHTTPS)
class PinnedNodedPolicy:
    """``Agent`` TLS policy: client certificate, server must be the pinned certificate."""

    def __init__(self, tls: NodedTLS) -> None:
        self._ctx = tls.openssl_context()

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _PinnedCreator(self._ctx)


@implementer(IOpenSSLClientConnectionCreator)
class _PinnedCreator:
    def __init__(self, ctx: SSL.Context) -> None:
        self._ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        return conn


class TwistedNodedClient:
    """Ask nodes for their master over treq; ``http`` is treq-like (injectable)."""

    def __init__(
        self,
        reactor: Any,
        tls: NodedTLS | None,
        *,
        port: int = 1811,
        timeout: float = NODED_TIMEOUT,
        http: Any = None,
    ) -> None:
        if http is None:
            import treq
            from twisted.web.client import Agent, HTTPConnectionPool

            assert tls is not None
            pool = HTTPConnectionPool(reactor, persistent=False)
            agent = Agent(reactor, contextFactory=PinnedNodedPolicy(tls), pool=pool)
            http = treq.client.HTTPClient(agent)
        self._http = http
        self._port = port
        self._timeout = timeout

    def _url(self, address: str, port: int | None) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"https://{host}:{port or self._port}{MASTER_NODE_NAME_PATH}"

    async def ask(self, node: str, address: str, port: int | None = None) -> str:
        import treq

        url = self._url(address, port)
        try:
            resp = await self._http.request(
                "POST", url, data=b"[]", headers={"Content-Type": ["application/json"]},
                timeout=self._timeout,
            )
            body = await treq.content(resp)
        except defer.CancelledError:
            raise NodedError(f"node {node} ({url}): no answer within {self._timeout}s") from None
        except Exception as e:  # connection, TLS, timeouts: all make the vote missing
            raise NodedError(f"node {node} ({url}): {_describe_failure(e)}") from None
        if resp.code != 200:
            raise NodedError(f"node {node} ({url}): HTTP {resp.code}")
        if len(body) > MAX_ANSWER_BYTES:
            raise NodedError(f"node {node} ({url}): answer too large")
        return parse_master_answer(node, body)

    async def gather(self, endpoints: Mapping[str, tuple[str, int] | str | None]) -> list[Ballot]:
        async def one(node: str) -> Ballot:
            ep = endpoints[node]
            if ep is None:
                return Ballot.missing(node, "no address")
            address, port = ep if isinstance(ep, tuple) else (ep, None)
            try:
                return Ballot(node=node, master=await self.ask(node, address, port))
            except NodedError as e:
                return Ballot.missing(node, str(e))
            except Exception as e:  # whatever a node does, it is only a missing vote
                return Ballot.missing(node, f"node {node} ({address}): {type(e).__name__}: {e}")

        ds = [defer.Deferred.fromCoroutine(one(n)) for n in endpoints]
        results = await defer.gatherResults(ds, consumeErrors=True)
        return list(results)


def _describe_failure(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)  # ResponseNeverReceived / ResponseFailed
    if reasons:
        inner = reasons[0].value
        if isinstance(inner, SSL.Error):
            return f"TLS failure: {inner}"
        return f"{type(inner).__name__}: {inner}"
    return f"{type(e).__name__}: {e}"
