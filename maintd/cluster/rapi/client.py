"""treq-based client for Ganeti's remote API (RAPI, version 2).

:class:`RapiClient` takes its HTTP client (anything with treq's
``request(method, url, **kw)``) and its clock as arguments, so tests drive
it with ``treq.testing.StubTreq`` and ``task.Clock``;
:meth:`RapiClient.create` / :meth:`RapiClient.from_config` build the real
one (persistent connection pool, pinned TLS, basic auth from a password
file).

Reads are retried with exponential back-off and jitter on connection
errors and 502/503/504; writes never are (a lost answer may hide a
submitted job).  Every request has a timeout covering the whole exchange,
body included, and every body is read so connections go back to the pool.
Each write returns the Ganeti job id and carries the daemon's ``reason``
as ``?reason=``, which Ganeti puts in the job's reason trail.
"""

from __future__ import annotations

import json
import os
import random
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import attrs
import treq
from OpenSSL import SSL
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from maintd.cluster.model import Cluster
from maintd.cluster.rapi.errors import (
    EXCERPT_CHARS,
    RapiAuthError,
    RapiBadRequest,
    RapiConfigError,
    RapiConnectionError,
    RapiError,
    RapiMalformed,
    RapiNotFound,
    RapiServerError,
    RapiTimeout,
    RapiTLSError,
    describe_error_body,
    excerpt,
)
from maintd.cluster.rapi.jobs import JobResult, parse_job
from maintd.cluster.rapi.loader import ClusterBuilder, parse_query_column
from maintd.common import strictjson

log = Logger()

T = TypeVar("T")

TAG_KINDS = ("cluster", "group", "node", "instance")
EVACUATE_MODES = ("primary-only", "secondary-only", "all")
MIGRATE_MODES = ("live", "non-live")
REPLACE_MODES = (
    "replace_on_primary",
    "replace_on_secondary",
    "replace_new_secondary",
    "replace_auto",
)
RETRY_STATUSES = frozenset({502, 503, 504})
_JSON_HEADERS = {b"Content-Type": [b"application/json"], b"Accept": [b"application/json"]}
_ACCEPT = {b"Accept": [b"application/json"]}
_NO_BODY = object()


def read_password_file(path: str) -> str:
    """The password in ``path`` (its first line).

    Refuses (``RapiConfigError``) a file that is not a regular file or that
    group or others may read or write.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise RapiConfigError(f"cannot read RAPI password file {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise RapiConfigError(f"RAPI password file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise RapiConfigError(
            f"RAPI password file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); make it 0600 or 0400"
        )
    try:
        with open(path, encoding="utf-8") as f:
            password = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise RapiConfigError(f"cannot read RAPI password file {path}: {e}") from e
    if not password:
        raise RapiConfigError(f"RAPI password file {path} is empty")
    return password


def _failure_values(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it wraps (twisted.web's ``reasons`` lists)."""
    out = [exc]
    for r in getattr(exc, "reasons", None) or []:
        if isinstance(r, Failure) and r.value is not None:
            out.extend(_failure_values(r.value))
    return out


#: Deepest nesting of a RAPI answer other than the bulk lists (real ones: < 10).
MAX_DEPTH = 64


def _strict_json(data: bytes) -> Any:
    """A RAPI answer, read with the one strict reader (the caller names the URL)."""
    return strictjson.loads(data, "RAPI answer", max_depth=MAX_DEPTH)


def _cancelled_is_final(inner: Deferred[T]) -> Deferred[T]:
    """``inner``, but failing with CancelledError as soon as it is cancelled.

    Cancelling a twisted.web request aborts its connection, and the request
    then fails with ``ResponseNeverReceived([ConnectionAborted])`` or
    ``ResponseFailed``: a connection error, which :meth:`RapiClient._call`
    retries after a back-off.  A read cancelled from outside (a sibling of
    ``load_cluster`` failed, the round stopped) must end instead, leaving no
    back-off DelayedCall and no later request behind.
    """

    cancelled = False

    def cancel(outer: Deferred[T]) -> None:
        nonlocal cancelled
        cancelled = True
        inner.cancel()  # outer then fails with CancelledError (Deferred.cancel)

    outer: Deferred[T] = Deferred(cancel)

    def forward(result: Any) -> None:
        if not cancelled and not outer.called:
            outer.callback(result)
        # else: the abort's own failure (now or later): consumed

    inner.addBoth(forward)
    return outer


def _transport_error(method: str, url: str, exc: BaseException) -> RapiError:
    values = _failure_values(exc)
    for v in values:
        if isinstance(v, SSL.Error):
            return RapiTLSError(
                f"TLS handshake failed ({v}); the server certificate is not the "
                "pinned RAPI certificate (--rapi-cert)",
                method=method,
                url=url,
            )
    detail = "; ".join(str(v) or type(v).__name__ for v in values[-1:])
    if len(values) > 1:
        detail = f"{type(exc).__name__}: {detail}"
    return RapiConnectionError(f"connection failed: {detail}", method=method, url=url)


def _status_error(method: str, url: str, status: int, body: bytes) -> RapiError:
    desc, _ = describe_error_body(body)
    message = f"HTTP {status}" + (f": {desc}" if desc else "")
    kw: dict[str, Any] = {"method": method, "url": url, "status": status, "body": body}
    if status in (401, 403):
        return RapiAuthError(message + " (check --rapi-user and --rapi-password-file)", **kw)
    if status == 404:
        return RapiNotFound(message, **kw)
    if 400 <= status < 500:
        return RapiBadRequest(message, **kw)
    if status >= 500:
        return RapiServerError(message, **kw)
    return RapiError(message + " (unexpected status)", **kw)


def _quote(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"bad object name {name!r}")
    return quote(name, safe="")


class RapiClient:
    """Ganeti RAPI v2 client.  See the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        http: Any,
        clock: Any,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 30,
        read_retries: int = 3,
        retry_base: float = 0.5,
        retry_max: float = 8.0,
        rng: random.Random | None = None,
        pool: Any = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.clock = clock
        self.user = user
        self._auth = (user, password) if user is not None and password is not None else None
        self.timeout = timeout
        self.read_retries = read_retries
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._rng = rng or random.Random()
        self._pool = pool

    # -- construction ---------------------------------------------------

    @classmethod
    def create(
        cls,
        url: str,
        *,
        reactor: Any,
        user: str | None = None,
        password_file: str | None = None,
        cert: str | None = None,
        insecure: bool = False,
        timeout: float = 30,
        read_retries: int = 3,
    ) -> RapiClient:
        """A client with a persistent pool, pinned TLS and basic auth.

        Raises :class:`RapiConfigError` for a bad URL, password file or
        certificate.
        """
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

        from maintd.cluster.rapi.tls import InsecurePolicy, PinnedCertificatePolicy

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RapiConfigError(f"bad RAPI URL {url!r}: expected https://HOST:PORT")
        password = read_password_file(password_file) if password_file else None
        if password is not None and not user:
            raise RapiConfigError("--rapi-password-file needs --rapi-user")
        if user and password is None:
            raise RapiConfigError(f"--rapi-user {user} needs --rapi-password-file")
        policy: Any
        if parts.scheme == "https":
            if insecure:
                log.warn(
                    "--rapi-insecure: the certificate of {url} is NOT verified; "
                    "anyone on the path can read the RAPI password and forge answers",
                    url=url,
                )
                policy = InsecurePolicy()
            else:
                if not cert:
                    raise RapiConfigError("https RAPI needs --rapi-cert (or --rapi-insecure)")
                policy = PinnedCertificatePolicy.from_file(cert)
        else:
            log.warn(
                "RAPI {url} is plain HTTP: no TLS{extra}",
                url=url,
                extra=", the password goes in clear" if user else "",
            )
            policy = BrowserLikePolicyForHTTPS()
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 8
        pool.cachedConnectionTimeout = 60
        agent = Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=timeout)
        http = treq.client.HTTPClient(agent)
        return cls(
            url,
            http=http,
            clock=reactor,
            user=user,
            password=password,
            timeout=timeout,
            read_retries=read_retries,
            pool=pool,
        )

    @classmethod
    def from_config(cls, config: Any, reactor: Any) -> RapiClient:
        """The client for the daemon's ``--rapi*`` options (a ``DaemonConfig``)."""
        return cls.create(
            config.rapi,
            reactor=reactor,
            user=config.rapi_user,
            password_file=config.rapi_password_file,
            cert=config.rapi_cert,
            insecure=config.rapi_insecure,
            timeout=config.rapi_timeout,
        )

    async def close(self) -> None:
        """Close pooled connections (call on shutdown)."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    # -- transport --------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        delay: float = min(self.retry_max, self.retry_base * (2**attempt))
        return float(delay * self._rng.uniform(0.5, 1.5))

    async def _exchange(
        self, method: str, url: str, params: Sequence[tuple[str, str]], body: Any
    ) -> tuple[int, list[bytes]]:
        """One request; (status, [body]).

        The body comes in a one-element list the caller pops: Deferreds and
        protocols sit in reference cycles that only the cyclic GC frees, and
        a big answer must not stay alive with them.
        """
        kw: dict[str, Any] = {"allow_redirects": False, "unbuffered": True}
        if params:
            kw["params"] = list(params)
        if self._auth is not None:
            kw["auth"] = self._auth
        if body is not _NO_BODY:
            kw["data"] = json.dumps(body).encode("utf-8")
            kw["headers"] = _JSON_HEADERS
        else:
            kw["headers"] = _ACCEPT
        try:
            response = await self.http.request(method, url, **kw)
        except (CancelledError, ConnectingCancelledError):
            raise CancelledError() from None
        except Exception as e:
            if any(isinstance(v, CancelledError) for v in _failure_values(e)):
                raise CancelledError() from None
            raise _transport_error(method, url, e) from e
        chunks: list[bytes] = []
        try:
            await treq.collect(response, chunks.append)
        except CancelledError:
            raise
        except Exception as e:
            raise RapiConnectionError(
                f"HTTP {response.code} answer truncated or unreadable ({e})",
                method=method,
                url=url,
                status=response.code,
            ) from e
        content = b"".join(chunks)
        chunks.clear()
        return response.code, [content]

    async def _once(
        self,
        method: str,
        url: str,
        params: Sequence[tuple[str, str]],
        body: Any,
        decode: Callable[[bytes], Any],
    ) -> Any:
        d = _cancelled_is_final(Deferred.fromCoroutine(self._exchange(method, url, params, body)))
        d.addTimeout(self.timeout, self.clock)
        try:
            status, holder = await d
        except defer.TimeoutError:
            # (A CancelledError from outside, e.g. a failed sibling read in
            # load_cluster, stays a CancelledError.)
            raise RapiTimeout(
                f"no complete answer within {self.timeout:g}s", method=method, url=url
            ) from None
        del d
        content = holder.pop()
        if not 200 <= status < 300:
            raise _status_error(method, url, status, content)
        try:
            return decode(content)
        except ValueError as e:
            why = f" ({e.problem})" if isinstance(e, strictjson.StrictJSONError) else ""
            raise RapiMalformed(
                f"HTTP {status} answer is not JSON{why}: {excerpt(content)!r}",
                method=method,
                url=url,
                status=status,
                body=content,
            ) from None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = _NO_BODY,
        read: bool,
        decode: Callable[[bytes], Any] = _strict_json,
    ) -> Any:
        url = self.base_url + path
        attempts = 1 + (self.read_retries if read else 0)
        for attempt in range(attempts):
            try:
                return await self._once(method, url, params, body, decode)
            except (RapiTimeout, RapiTLSError):
                raise
            except (RapiConnectionError, RapiServerError) as e:
                retriable = isinstance(e, RapiConnectionError) or e.status in RETRY_STATUSES
                if not read or not retriable or attempt + 1 >= attempts:
                    raise
                delay = self._backoff(attempt)
                # Debug: the caller logs the final failure (one line per
                # failed round), retries that then succeed are routine.
                log.debug(
                    "RAPI read {method} {url} failed ({error}); retry {n}/{max} in {delay:.1f}s",
                    method=method,
                    url=url,
                    error=e,
                    n=attempt + 1,
                    max=self.read_retries,
                    delay=delay,
                )
                await task.deferLater(self.clock, delay, lambda: None)
        raise AssertionError("unreachable")

    async def _get(
        self,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        decode: Callable[[bytes], Any] = _strict_json,
    ) -> Any:
        return await self._call("GET", path, params=params, read=True, decode=decode)

    async def _get_typed(
        self,
        path: str,
        kind: type[T],
        params: Sequence[tuple[str, str]] = (),
        decode: Callable[[bytes], Any] = _strict_json,
    ) -> T:
        doc = await self._get(path, params, decode)
        if not isinstance(doc, kind) or isinstance(doc, bool):
            raise RapiMalformed(
                f"expected a JSON {kind.__name__}, got {excerpt(json.dumps(doc))!r}",
                method="GET",
                url=self.base_url + path,
            )
        return doc

    async def _write(
        self,
        method: str,
        path: str,
        *,
        reason: str | None,
        params: Iterable[tuple[str, str]] = (),
        body: Any = _NO_BODY,
    ) -> int:
        query = list(params)
        if reason:
            query.append(("reason", reason))
        doc = await self._call(method, path, params=query, body=body, read=False)
        if isinstance(doc, str) and doc.isdigit():
            doc = int(doc)
        if not isinstance(doc, int) or isinstance(doc, bool):
            raise RapiMalformed(
                f"expected a job id, got {excerpt(json.dumps(doc))!r}",
                method=method,
                url=self.base_url + path,
            )
        log.debug("RAPI {method} {path}: job {job}", method=method, path=path, job=doc)
        return doc

    # -- reads ------------------------------------------------------------

    async def version(self) -> int:
        return await self._get_typed("/version", int)

    async def features(self) -> list[str]:
        return await self._get_typed("/2/features", list)

    async def info(self) -> dict[str, Any]:
        return await self._get_typed("/2/info", dict)

    async def nodes_bulk(self) -> list[dict[str, Any]]:
        return await self._get_typed("/2/nodes", list, [("bulk", "1")])

    async def instances_bulk(self) -> list[dict[str, Any]]:
        return await self._get_typed("/2/instances", list, [("bulk", "1")])

    async def groups_bulk(self) -> list[dict[str, Any]]:
        return await self._get_typed("/2/groups", list, [("bulk", "1")])

    async def tags(self, kind: str, name: str | None = None) -> list[str]:
        return await self._get_typed(self._tags_path(kind, name), list)

    async def instance_hypervisors(self) -> dict[str, str]:
        """Instance name -> hypervisor, from ``/2/query/instance``.

        The bulk instance answer has no hypervisor field; Ganeti's query
        resource has it (read access is enough).
        """
        path = "/2/query/instance"
        answer = await self._get(path, [("fields", "name,hypervisor")])
        try:
            return parse_query_column(answer, "name", "hypervisor")
        except ValueError as e:
            raise RapiMalformed(str(e), method="GET", url=self.base_url + path) from None

    async def _with_hypervisors(self, cluster: Cluster) -> Cluster:
        """``cluster`` with each instance's own hypervisor, where they can differ.

        Only needed when the cluster enables more than one hypervisor (else
        the default is right for every instance).  When the query fails the
        default stays, with one warning: Xen/KVM load handling may then be
        wrong for some instances, nothing else depends on it.
        """
        if len(set(cluster.enabled_hypervisors)) < 2:
            return cluster
        try:
            hvs = await self.instance_hypervisors()
        except RapiError as e:
            log.warn(
                "cannot read instance hypervisors ({error}); assuming {default} for all",
                error=e,
                default=cluster.default_hypervisor,
            )
            return cluster
        instances = {
            name: attrs.evolve(inst, hypervisor=hvs[name])
            if hvs.get(name) and hvs[name] != inst.hypervisor
            else inst
            for name, inst in cluster.instances.items()
        }
        return attrs.evolve(cluster, instances=instances)

    async def load_cluster(self) -> Cluster:
        """The cluster snapshot: the four reads in parallel, then the loader.

        On a cluster with several hypervisors enabled a fifth read names each
        instance's hypervisor (see :meth:`_with_hypervisors`).

        When one read fails for good the others are cancelled, so a failed
        snapshot ends with the first final error.

        The node and instance answers are kept as bytes until ``/2/info``
        and the groups are known, then decoded straight into model objects
        (see :class:`~maintd.cluster.rapi.loader.ClusterBuilder`).
        """

        def raw(data: bytes) -> list[bytes]:
            return [data]  # popped by _decode (see _exchange)

        bulk = [("bulk", "1")]
        reads: list[Deferred[Any]] = [
            Deferred.fromCoroutine(self.info()),
            Deferred.fromCoroutine(self.groups_bulk()),
            Deferred.fromCoroutine(self._get("/2/nodes", bulk, raw)),
            Deferred.fromCoroutine(self._get("/2/instances", bulk, raw)),
        ]
        try:
            answers: list[Any] = await defer.gatherResults(reads, consumeErrors=True)
        except defer.FirstError as e:
            # One read failed for good: the snapshot is lost anyway, so the
            # others stop now instead of finishing their retry back-off
            # (their CancelledErrors are consumed by gatherResults).
            for d in reads:
                d.cancel()
            e.subFailure.raiseException()
        # Drop every other reference to the big bodies so each can be freed
        # as soon as it is decoded.
        del reads
        info, groups = answers[0], answers[1]
        try:
            builder = ClusterBuilder(info, groups)
            builder.add_nodes(self._decode("/2/nodes", answers, 2, builder.decode_nodes))
            builder.add_instances(
                self._decode("/2/instances", answers, 3, builder.decode_instances)
            )
            cluster = builder.cluster()
        except ValueError as e:
            raise RapiMalformed(str(e), url=self.base_url) from None
        return await self._with_hypervisors(cluster)

    def _decode(
        self, path: str, answers: list[Any], index: int, decode: Callable[[str], Any]
    ) -> Any:
        data = answers[index].pop()
        try:
            # bytes -> str first, so only one copy of the body is alive while
            # the JSON is parsed
            text = data.decode("utf-8")
            head = data[:EXCERPT_CHARS]
            del data
            return decode(text)
        except ValueError as e:
            why = f" ({e.problem})" if isinstance(e, strictjson.StrictJSONError) else ""
            raise RapiMalformed(
                f"HTTP 200 answer is not UTF-8 JSON{why}: {excerpt(head)!r}",
                method="GET",
                url=f"{self.base_url}{path}?bulk=1",
            ) from None

    async def get_job(self, job_id: int) -> JobResult:
        """Status of one job; ``lost`` when Ganeti no longer knows it."""
        path = f"/2/jobs/{int(job_id)}"
        try:
            doc = await self._get(path)
        except RapiNotFound:
            return JobResult.lost(job_id)
        try:
            return parse_job(job_id, doc)
        except ValueError as e:
            raise RapiMalformed(str(e), method="GET", url=self.base_url + path) from None

    async def jobs_bulk(self) -> list[JobResult]:
        """All jobs in Ganeti's queue (bulk answers carry no error text)."""
        docs = await self._get_typed("/2/jobs", list, [("bulk", "1")])
        out = []
        for doc in docs:
            jid = doc.get("id") if isinstance(doc, dict) else None
            try:
                out.append(parse_job(int(jid), doc))  # type: ignore[arg-type]
            except (TypeError, ValueError) as e:
                log.warn("RAPI /2/jobs?bulk=1: skipping bad job {job}: {e}", job=jid, e=e)
        return out

    async def jobs_bulk_raw(self) -> list[Any]:
        """``GET /2/jobs?bulk=1`` as Ganeti answers it (``ops`` with their reason trails)."""
        return await self._get_typed("/2/jobs", list, [("bulk", "1")])

    async def node_names(self) -> list[str]:
        """Names of the cluster's nodes (``GET /2/nodes``, no bulk)."""
        docs = await self._get_typed("/2/nodes", list)
        return [d["id"] for d in docs if isinstance(d, dict) and isinstance(d.get("id"), str)]

    async def wait_job_change(
        self,
        job_id: int,
        fields: Sequence[str] = ("status",),
        previous_job_info: list[Any] | None = None,
        previous_log_serial: int | None = None,
    ) -> dict[str, Any] | None:
        """One long-poll of ``/2/jobs/ID/wait`` (Ganeti answers within ~10 s).

        Returns ``{"job_info": [...], "log_entries": [...]}`` or None when
        nothing changed; ``RapiNotFound`` for an unknown job.
        """
        body = {
            "fields": list(fields),
            "previous_job_info": previous_job_info,
            "previous_log_serial": previous_log_serial,
        }
        doc = await self._call("GET", f"/2/jobs/{int(job_id)}/wait", body=body, read=True)
        if doc is not None and not isinstance(doc, dict):
            raise RapiMalformed(
                f"expected an object or null, got {excerpt(json.dumps(doc))!r}",
                method="GET",
                url=f"{self.base_url}/2/jobs/{int(job_id)}/wait",
            )
        return doc

    async def wait_jobs(
        self,
        job_ids: Iterable[int],
        timeout: float,
        *,
        first_interval: float = 0.5,
        max_interval: float = 5.0,
        parallel: int = 8,
    ) -> dict[int, JobResult]:
        """Wait until every job is final or ``timeout`` seconds passed.

        Bounded polling of ``/2/jobs/ID`` with doubling intervals; returns
        each job's last seen :class:`JobResult` (final, or still pending when
        the time ran out).  A job Ganeti no longer knows is ``lost``.
        RAPI failures propagate (:class:`RapiError`).
        """
        pending = list(dict.fromkeys(int(j) for j in job_ids))
        results: dict[int, JobResult] = {}
        deadline = self.clock.seconds() + timeout
        interval = first_interval
        sem = defer.DeferredSemaphore(max(1, parallel))
        while pending:
            polls = [sem.run(self.get_job, j) for j in pending]
            try:
                got = await defer.gatherResults(polls, consumeErrors=True)
            except defer.FirstError as e:
                e.subFailure.raiseException()
            for r in got:
                results[r.id] = r
            pending = [j for j in pending if not results[j].final]
            remaining = deadline - self.clock.seconds()
            if not pending or remaining <= 0:
                break
            await task.deferLater(self.clock, min(interval, remaining), lambda: None)
            interval = min(interval * 2, max_interval)
        return results

    # -- writes -----------------------------------------------------------

    @staticmethod
    def _tags_path(kind: str, name: str | None) -> str:
        if kind == "cluster":
            return "/2/tags"
        if kind not in TAG_KINDS:
            raise ValueError(f"bad tag kind {kind!r}: expected one of {', '.join(TAG_KINDS)}")
        return f"/2/{kind}s/{_quote(name or '')}/tags"

    @staticmethod
    def _tag_params(tags: Iterable[str]) -> list[tuple[str, str]]:
        tags = list(tags)
        if not tags or any(not isinstance(t, str) or not t for t in tags):
            raise ValueError(f"bad tag list {tags!r}")
        return [("tag", t) for t in tags]

    async def add_tags(
        self, kind: str, name: str | None, tags: Iterable[str], reason: str | None
    ) -> int:
        """``PUT /2/.../tags?tag=..`` (``OpTagsSet``)."""
        return await self._write(
            "PUT", self._tags_path(kind, name), reason=reason, params=self._tag_params(tags)
        )

    async def remove_tags(
        self, kind: str, name: str | None, tags: Iterable[str], reason: str | None
    ) -> int:
        """``DELETE /2/.../tags?tag=..`` (``OpTagsDel``)."""
        return await self._write(
            "DELETE", self._tags_path(kind, name), reason=reason, params=self._tag_params(tags)
        )

    async def set_node_drained(self, node: str, drained: bool, reason: str | None) -> int:
        """``POST /2/nodes/N/modify {"drained": ..}`` (``OpNodeSetParams``).

        Not ``PUT /role``: setting role ``regular`` to undrain would also
        drop the master-candidate flag.
        """
        return await self._write(
            "POST", f"/2/nodes/{_quote(node)}/modify", reason=reason, body={"drained": drained}
        )

    async def evacuate_node(
        self,
        node: str,
        *,
        mode: str = "all",
        iallocator: str | None = None,
        remote_node: str | None = None,
        reason: str | None,
    ) -> int:
        """``POST /2/nodes/N/evacuate`` (``OpNodeEvacuate``)."""
        if mode not in EVACUATE_MODES:
            raise ValueError(f"bad evacuation mode {mode!r}")
        if iallocator and remote_node:
            raise ValueError("give iallocator or remote_node, not both")
        body: dict[str, Any] = {"mode": mode}
        if iallocator:
            body["iallocator"] = iallocator
        if remote_node:
            body["remote_node"] = remote_node
        return await self._write(
            "POST", f"/2/nodes/{_quote(node)}/evacuate", reason=reason, body=body
        )

    async def migrate_instance(
        self,
        name: str,
        *,
        target_node: str | None = None,
        mode: str = "live",
        allow_failover: bool = False,
        reason: str | None,
    ) -> int:
        """``PUT /2/instances/I/migrate`` (``OpInstanceMigrate``)."""
        if mode not in MIGRATE_MODES:
            raise ValueError(f"bad migration mode {mode!r}")
        body: dict[str, Any] = {"mode": mode, "allow_failover": allow_failover}
        if target_node:
            body["target_node"] = target_node
        return await self._write(
            "PUT", f"/2/instances/{_quote(name)}/migrate", reason=reason, body=body
        )

    async def failover_instance(
        self,
        name: str,
        *,
        target_node: str | None = None,
        ignore_consistency: bool = False,
        reason: str | None,
    ) -> int:
        """``PUT /2/instances/I/failover`` (``OpInstanceFailover``)."""
        body: dict[str, Any] = {"ignore_consistency": ignore_consistency}
        if target_node:
            body["target_node"] = target_node
        return await self._write(
            "PUT", f"/2/instances/{_quote(name)}/failover", reason=reason, body=body
        )

    async def replace_disks(
        self,
        name: str,
        *,
        mode: str = "replace_new_secondary",
        remote_node: str | None = None,
        iallocator: str | None = None,
        reason: str | None,
    ) -> int:
        """``POST /2/instances/I/replace-disks`` (``OpInstanceReplaceDisks``)."""
        if mode not in REPLACE_MODES:
            raise ValueError(f"bad replace-disks mode {mode!r}")
        if remote_node and iallocator:
            raise ValueError("give remote_node or iallocator, not both")
        if mode == "replace_new_secondary" and not (remote_node or iallocator):
            raise ValueError("replace_new_secondary needs remote_node or iallocator")
        body: dict[str, Any] = {"mode": mode}
        if remote_node:
            body["remote_node"] = remote_node
        if iallocator:
            body["iallocator"] = iallocator
        return await self._write(
            "POST", f"/2/instances/{_quote(name)}/replace-disks", reason=reason, body=body
        )

    async def recreate_disks(
        self,
        name: str,
        *,
        nodes: Sequence[str] | None = None,
        iallocator: str | None = None,
        reason: str | None,
    ) -> int:
        """``POST /2/instances/I/recreate-disks`` (``OpInstanceRecreateDisks``)."""
        if nodes and iallocator:
            raise ValueError("give nodes or iallocator, not both")
        body: dict[str, Any] = {}
        if nodes:
            body["nodes"] = list(nodes)
        if iallocator:
            body["iallocator"] = iallocator
        return await self._write(
            "POST", f"/2/instances/{_quote(name)}/recreate-disks", reason=reason, body=body
        )

    async def reinstall_instance(
        self, name: str, *, os: str | None = None, start: bool = True, reason: str | None
    ) -> int:
        """``POST /2/instances/I/reinstall {"start": .., "os": ..}``.

        Ganeti 3.0's reinstall handler refuses query arguments next to a body
        ("Can't combine query and body parameters") and builds its opcodes
        without the reason trail, so ``reason`` cannot reach Ganeti here; it
        is logged instead.
        """
        body: dict[str, Any] = {"start": start}
        if os:
            body["os"] = os
        job = await self._write(
            "POST", f"/2/instances/{_quote(name)}/reinstall", reason=None, body=body
        )
        log.info("RAPI reinstall of {name}: job {job} ({reason})", name=name, job=job, reason=reason)
        return job

    async def startup_instance(self, name: str, *, reason: str | None) -> int:
        """``PUT /2/instances/I/startup`` (``OpInstanceStartup``)."""
        return await self._write("PUT", f"/2/instances/{_quote(name)}/startup", reason=reason)

    async def shutdown_instance(self, name: str, *, reason: str | None) -> int:
        """``PUT /2/instances/I/shutdown`` (``OpInstanceShutdown``): marks it down too."""
        return await self._write("PUT", f"/2/instances/{_quote(name)}/shutdown", reason=reason)
