"""Klein front answering like Ganeti 3.0's RAPI (``ganeti/rapi/rlib2.py``).

Same paths, methods, query parameters, status codes and JSON fields as the
real server for the calls maintd's client makes.  Errors are Ganeti's
``{"code", "message", "explain"}`` bodies (message HTML-escaped); a method a
resource lacks is 501.  Every request needs basic auth (GETs may be
anonymous with ``anonymous_reads``, as hbal's RAPI backend needs); writes
need a user with ``write``.  Writes answer the new job id as a bare integer.

The bulk answers are encoded once per cluster generation.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from maintd.sim import control
from maintd.sim.cluster import gc_paused
from maintd.sim.jobs import FINAL, lost_job_json
from maintd.sim.runtime import Simulation
from maintd.sim.users import REALM, User, parse_basic_auth

log = Logger()

NAME = r"[\w._-]+"
FEATURES = [
    "node-evac-res1",
    "node-migrate-reqv1",
    "instance-create-reqv1",
    "instance-reinstall-reqv1",
]
ROLE_NAMES = {
    "M": "master",
    "C": "master-candidate",
    "R": "regular",
    "D": "drained",
    "O": "offline",
}
#: How long ``/2/jobs/ID/wait`` waits for a change (Ganeti's _WFJC_TIMEOUT).
WAIT_TIMEOUT = 10.0

OP_BASE = {"debug_level": 0, "priority": 0, "depends": None, "comment": None}

#: Body parameters each opcode accepts, with Ganeti's defaults.
OP_PARAMS: dict[str, dict[str, Any]] = {
    "OP_INSTANCE_MIGRATE": {
        "mode": "live",
        "allow_runtime_changes": True,
        "ignore_ipolicy": False,
        "cleanup": False,
        "allow_failover": False,
        "ignore_hvversions": False,
        "target_node": None,
        "iallocator": None,
        "live": None,
    },
    "OP_INSTANCE_FAILOVER": {
        "shutdown_timeout": 120,
        "ignore_consistency": False,
        "ignore_ipolicy": False,
        "cleanup": False,
        "iallocator": None,
        "target_node": None,
    },
    "OP_INSTANCE_REPLACE_DISKS": {
        "mode": None,
        "early_release": False,
        "ignore_ipolicy": False,
        "disks": [],
        "remote_node": None,
        "iallocator": None,
    },
    "OP_INSTANCE_RECREATE_DISKS": {"disks": [], "nodes": [], "iallocator": None},
    "OP_NODE_EVACUATE": {
        "early_release": False,
        "mode": None,
        "remote_node": None,
        "iallocator": None,
    },
    "OP_NODE_SET_PARAMS": {
        "force": False,
        "drained": None,
        "offline": None,
        "master_candidate": None,
        "auto_promote": False,
        "master_capable": None,
        "vm_capable": None,
        "secondary_ip": None,
        "ndparams": None,
        "powered": None,
    },
    "OP_INSTANCE_SHUTDOWN": {
        "timeout": 120,
        "ignore_offline_nodes": False,
        "no_remember": False,
        "admin_state_source": None,
    },
}


class HttpError(Exception):
    def __init__(
        self, code: int, message: str | None = None, headers: dict[bytes, bytes] | None = None
    ) -> None:
        status = HTTPStatus(code)
        super().__init__(message or status.phrase)
        self.code = code
        self.message = message or status.phrase
        self.explain = status.description
        self.headers = headers or {}

    def body(self) -> bytes:
        return json.dumps(
            {"code": self.code, "message": html.escape(self.message), "explain": self.explain}
        ).encode()


def _not_found() -> HttpError:
    err = HttpError(404)
    err.explain = "Nothing matches the given URI"
    return err


class Resource:
    """One RAPI resource: handlers by method; ``rname`` is rlib2's class name tail."""

    def __init__(self, rname: str, write_get: bool = False, **handlers: Callable[..., Any]):
        self.rname = rname
        self.write_get = write_get
        self.handlers = handlers


class Request:
    """What a handler needs from an HTTP request."""

    def __init__(self, method: str, path: str, args: dict[str, list[str]], body: Any):
        self.method = method
        self.path = path
        self.args = args
        self.body = body
        self.rname = ""

    def string(self, name: str, default: str | None = None) -> str | None:
        vals = self.args.get(name)
        return vals[0] if vals else default

    def int(self, name: str, default: int = 0) -> int:
        val = self.string(name)
        if val is None:
            return default
        try:
            return int(val)
        except ValueError:
            raise HttpError(400, f"Invalid value for the '{name}' parameter") from None

    def reason_trail(self) -> list[list[Any]]:
        trail: list[list[Any]] = []
        reason = self.string("reason")
        if reason:
            trail.append(["gnt:user", reason, time.time_ns()])
        trail.append([f"gnt:library:rlib2:{self.rname}", "", time.time_ns()])
        return trail


class RapiFront:
    """The Klein app.  ``users`` None means no authentication at all."""

    app = Klein()

    def __init__(
        self, sim: Simulation, users: dict[str, User] | None, anonymous_reads: bool = False
    ) -> None:
        self.sim = sim
        self.users = users
        self.anonymous_reads = anonymous_reads
        self._cache: dict[str, tuple[int, bytes]] = {}
        #: Per-instance encoded JSON, keyed by what can change its answer.
        self._inst_cache: dict[str, tuple[Any, bytes]] = {}
        self._hanging: list[Deferred[bytes]] = []
        self._timers: list[Any] = []
        self.routes = self._routes()
        self.control = control.Control(sim)

    def resource(self) -> Any:
        return self.app.resource()

    def stop(self) -> None:
        """Release requests held by a ``hang`` fault."""
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        hanging, self._hanging = self._hanging, []
        for d in hanging:
            if not d.called:
                d.cancel()

    # -- routing --------------------------------------------------------------

    def _tags_resource(self, name: str) -> Resource:
        """The tags of the cluster, a node, an instance or a group: same three methods."""
        return Resource(name, GET=self.get_tags, PUT=self.put_tags, DELETE=self.delete_tags)

    def _routes(self) -> list[tuple[re.Pattern[str], Resource]]:
        r: list[tuple[str, Resource]] = [
            ("/version", Resource("version", GET=lambda rq: 2)),
            ("/2", Resource("2", GET=lambda rq: None)),
            ("/2/info", Resource("info", GET=self.get_info)),
            ("/2/features", Resource("features", GET=lambda rq: FEATURES)),
            (
                "/2/os",
                Resource(
                    "os", GET=lambda rq: sorted({i.os for i in self.sim.cluster.instances.values()})
                ),
            ),
            (
                "/2/tags",
                self._tags_resource("tags"),
            ),
            ("/2/nodes", Resource("nodes", GET=self.get_nodes)),
            (f"/2/nodes/({NAME})", Resource("nodes_name", GET=self.get_node)),
            (
                f"/2/nodes/({NAME})/tags",
                self._tags_resource("nodes_name_tags"),
            ),
            (
                f"/2/nodes/({NAME})/role",
                Resource("nodes_name_role", GET=self.get_role, PUT=self.put_role),
            ),
            (
                f"/2/nodes/({NAME})/modify",
                Resource("nodes_name_modify", POST=self.post_node_modify),
            ),
            (
                f"/2/nodes/({NAME})/evacuate",
                Resource("nodes_name_evacuate", POST=self.post_node_evacuate),
            ),
            ("/2/instances", Resource("instances", GET=self.get_instances)),
            (f"/2/instances/({NAME})", Resource("instances_name", GET=self.get_instance)),
            (
                f"/2/instances/({NAME})/tags",
                self._tags_resource("instances_name_tags"),
            ),
            (
                f"/2/instances/({NAME})/migrate",
                Resource("instances_name_migrate", PUT=self.op_body("OP_INSTANCE_MIGRATE")),
            ),
            (
                f"/2/instances/({NAME})/failover",
                Resource("instances_name_failover", PUT=self.op_body("OP_INSTANCE_FAILOVER")),
            ),
            (
                f"/2/instances/({NAME})/replace-disks",
                Resource("instances_name_replace_disks", POST=self.post_replace_disks),
            ),
            (
                f"/2/instances/({NAME})/recreate-disks",
                Resource(
                    "instances_name_recreate_disks", POST=self.op_body("OP_INSTANCE_RECREATE_DISKS")
                ),
            ),
            (
                f"/2/instances/({NAME})/reinstall",
                Resource("instances_name_reinstall", POST=self.post_reinstall),
            ),
            (
                f"/2/instances/({NAME})/startup",
                Resource("instances_name_startup", PUT=self.put_startup),
            ),
            (
                f"/2/instances/({NAME})/shutdown",
                Resource("instances_name_shutdown", PUT=self.op_body("OP_INSTANCE_SHUTDOWN")),
            ),
            ("/2/groups", Resource("groups", GET=self.get_groups)),
            (f"/2/groups/({NAME})", Resource("groups_name", GET=self.get_group)),
            (
                f"/2/groups/({NAME})/tags",
                self._tags_resource("groups_name_tags"),
            ),
            (f"/2/query/({NAME})", Resource("query", GET=self.get_query)),
            ("/2/jobs", Resource("jobs", GET=self.get_jobs)),
            (f"/2/jobs/({NAME})", Resource("jobs_id", GET=self.get_job, DELETE=self.delete_job)),
            (
                f"/2/jobs/({NAME})/wait",
                Resource("jobs_id_wait", write_get=True, GET=self.get_job_wait),
            ),
        ]
        return [(re.compile(f"^{p}$"), res) for p, res in r]

    @app.route("/", branch=True)
    def dispatch(self, request: IRequest) -> Any:
        path = request.path.decode("utf-8", "replace")
        method = request.method.decode("ascii", "replace")
        if path.startswith("/sim/") or path == "/sim":
            return self._guard(request, lambda: self._control(request, method, path))
        fault = self.sim.faults.take_rapi()
        if fault is not None:
            return self._fault(request, fault)
        return self._guard(request, lambda: self._handle(request, method, path))

    def _guard(self, request: IRequest, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except HttpError as err:
            return self._error(request, err)
        if isinstance(result, Deferred):
            result.addErrback(self._deferred_error, request)
        return result

    def _deferred_error(self, failure: Any, request: IRequest) -> Any:
        if failure.check(HttpError):
            return self._error(request, failure.value)
        return failure

    @staticmethod
    def _drop(failure: Any, request: IRequest) -> Any:
        """A hung request released at stop: drop the connection, answer nothing."""
        failure.trap(CancelledError)
        transport = getattr(getattr(request, "channel", None), "transport", None)
        if transport is not None:
            abort = getattr(transport, "abortConnection", None) or transport.loseConnection
            abort()
        return None

    def _error(self, request: IRequest, err: HttpError) -> bytes:
        request.setResponseCode(err.code)
        request.setHeader(b"Content-Type", b"application/json")
        for k, v in err.headers.items():
            request.setHeader(k, v)
        return err.body()

    def _fault(self, request: IRequest, fault: Any) -> Any:
        if fault.kind == "hang":
            d: Deferred[bytes] = Deferred()
            self._hanging.append(d)
            d.addErrback(self._drop, request)
            return d
        if fault.kind == "garbage":
            request.setHeader(b"Content-Type", b"application/json")
            return b'{"garbage": [1, 2,, <html>'
        return self._error(request, HttpError(fault.status, fault.message))

    def _authorize(self, request: IRequest, write: bool) -> None:
        if self.users is None:
            return
        if not write and self.anonymous_reads:
            return
        creds = parse_basic_auth(request.getHeader(b"authorization"))  # type: ignore[arg-type]
        user = self.users.get(creds[0]) if creds else None
        if creds is None or user is None or not user.check(creds[1]):
            raise HttpError(
                401, "Unauthorized", {b"WWW-Authenticate": f'Basic realm="{REALM}"'.encode()}
            )
        if write and not user.write:
            raise HttpError(403, "Forbidden")

    @staticmethod
    def _args(request: IRequest) -> dict[str, list[str]]:
        args: dict[str, list[str]] = {}
        for k, vs in (request.args or {}).items():  # type: ignore[attr-defined]
            args[k.decode("utf-8", "replace")] = [v.decode("utf-8", "replace") for v in vs]
        return args

    @staticmethod
    def _body(request: IRequest, strict: bool = True) -> Any:
        raw = request.content.read() if request.content is not None else b""
        if not raw:
            return None
        # Like Ganeti's RAPI server: a body must be declared as JSON (the
        # /sim/ API is lenient, for curl -d).
        ctype = request.getHeader(b"content-type") or b"application/octet-stream"
        if strict and ctype.split(b";")[0].strip().lower() != b"application/json":
            raise HttpError(415)
        try:
            return json.loads(raw)
        except ValueError:
            raise HttpError(400, "Unable to parse JSON data") from None

    def _handle(self, request: IRequest, method: str, path: str) -> Any:
        found = self._route(path)
        if found is None:
            raise _not_found()
        res, m = found
        handler = res.handlers.get(method)
        if handler is None:
            raise HttpError(501, f"Method {method} is unsupported for path {path}")
        self._authorize(request, write=method != "GET" or res.write_get)
        rq = Request(method, path, self._args(request), self._body(request))
        rq.rname = res.rname
        result = handler(rq, *m.groups())
        request.setHeader(b"Content-Type", b"application/json")
        if isinstance(result, Deferred):
            return result.addCallback(lambda r: json.dumps(r).encode())
        if isinstance(result, bytes):
            return result
        return json.dumps(result).encode()

    def _route(self, path: str) -> tuple[Resource, re.Match[str]] | None:
        for pattern, res in self.routes:
            m = pattern.match(path)
            if m:
                return res, m
        return None

    def _control(self, request: IRequest, method: str, path: str) -> Any:
        self._authorize(request, write=True)
        body = self._body(request, strict=False)
        request.setHeader(b"Content-Type", b"application/json")
        try:
            result = self.control.handle(method, path, body)
        except control.ControlError as err:
            raise HttpError(err.code, str(err)) from err
        return json.dumps(result).encode()

    # -- cached reads -------------------------------------------------------------

    def _cached(self, key: str, build: Callable[[], Any]) -> bytes:
        gen = self.sim.cluster.generation
        hit = self._cache.get(key)
        if hit is not None and hit[0] == gen:
            return hit[1]
        with gc_paused():
            data = json.dumps(build()).encode()
        self._cache[key] = (gen, data)
        return data

    def get_query(self, rq: Request, resource: str) -> dict[str, Any]:
        """``GET /2/query/instance?fields=...``: Ganeti's QueryResponse shape.

        Only the instance fields maintd reads are known; any other field is
        answered as Ganeti does for an unknown one (kind ``unknown``, every
        value ``[1, null]``).  Another resource is Ganeti's 502 parse error.
        """
        if resource != "instance":
            raise HttpError(
                502,
                f"Failed to parse request: Can't parse value '{resource}' as"
                " neitherQueryTypeLuxi nor QueryTypeOp",
            )
        fields = [f.strip() for f in (rq.string("fields") or "").split(",") if f.strip()]
        c = self.sim.cluster
        getters: dict[str, tuple[str, Callable[[Any], Any]]] = {
            "name": ("Instance", lambda i: i.name),
            "hypervisor": ("Hypervisor", lambda i: i.hypervisor or c.default_hypervisor),
            "pnode": ("Primary_node", lambda i: i.primary),
        }
        defs = [
            {"name": f, "title": getters[f][0], "kind": "text", "doc": f}
            if f in getters
            else {"name": f, "title": f, "kind": "unknown", "doc": f"Unknown field '{f}'"}
            for f in fields
        ]
        data = [
            [[0, getters[f][1](inst)] if f in getters else [1, None] for f in fields]
            for inst in c.instances.values()
        ]
        return {"data": data, "fields": defs}

    def get_info(self, rq: Request) -> bytes:
        return self._cached("info", self.sim.cluster.info_json)

    def get_nodes(self, rq: Request) -> bytes:
        c = self.sim.cluster
        if rq.int("bulk"):
            return self._cached("nodes-bulk", lambda: [c.node_json(n) for n in c.nodes.values()])
        return self._cached("nodes", lambda: [{"id": n, "uri": f"/2/nodes/{n}"} for n in c.nodes])

    def get_instances(self, rq: Request) -> bytes:
        c = self.sim.cluster
        if rq.int("bulk"):
            gen = c.generation
            hit = self._cache.get("instances-bulk")
            if hit is None or hit[0] != gen:
                with gc_paused():
                    hit = (gen, self._encode_instances())
                self._cache["instances-bulk"] = hit
            return hit[1]
        return self._cached(
            "instances", lambda: [{"id": n, "uri": f"/2/instances/{n}"} for n in c.instances]
        )

    def _encode_instances(self) -> bytes:
        """The bulk answer, re-encoding only instances whose answer changed."""
        c = self.sim.cluster
        cache = self._inst_cache
        parts = []
        for inst in c.instances.values():
            key = (inst.serial_no, c.nodes[inst.primary].offline)
            hit = cache.get(inst.name)
            if hit is None or hit[0] != key:
                hit = (key, json.dumps(c.instance_json(inst)).encode())
                cache[inst.name] = hit
            parts.append(hit[1])
        if len(cache) > len(c.instances):
            for name in set(cache) - set(c.instances):
                del cache[name]
        return b"[" + b", ".join(parts) + b"]"

    def get_groups(self, rq: Request) -> bytes:
        c = self.sim.cluster
        if rq.int("bulk"):
            return self._cached("groups-bulk", lambda: [c.group_json(g) for g in c.groups.values()])
        return self._cached(
            "groups", lambda: [{"name": n, "uri": f"/2/groups/{n}"} for n in c.groups]
        )

    def get_node(self, rq: Request, name: str) -> Any:
        node = self.sim.cluster.nodes.get(name)
        if node is None:
            raise _not_found()
        # rlib2's single-node answer also carries the secondary IP.
        return {**self.sim.cluster.node_json(node), "secondary_ip": node.sip}

    def get_instance(self, rq: Request, name: str) -> Any:
        inst = self.sim.cluster.instances.get(name)
        if inst is None:
            raise _not_found()
        return self.sim.cluster.instance_json(inst)

    def get_group(self, rq: Request, name: str) -> Any:
        group = self.sim.cluster.groups.get(name)
        if group is None:
            raise _not_found()
        return self.sim.cluster.group_json(group)

    def get_role(self, rq: Request, name: str) -> Any:
        node = self.sim.cluster.nodes.get(name)
        if node is None:
            raise _not_found()
        return ROLE_NAMES[node.role]

    # -- tags -------------------------------------------------------------------------

    def _tag_target(self, rq: Request, name: str | None) -> tuple[str, str | None, Any]:
        c = self.sim.cluster
        if rq.rname == "tags":
            return "cluster", None, c
        tables: dict[str, tuple[str, dict[str, Any]]] = {
            "nodes_name_tags": ("node", c.nodes),
            "instances_name_tags": ("instance", c.instances),
            "groups_name_tags": ("nodegroup", c.groups),
        }
        kind, table = tables[rq.rname]
        return kind, name, table.get(name or "")

    def get_tags(self, rq: Request, name: str | None = None) -> Any:
        kind, name, target = self._tag_target(rq, name)
        if target is None:
            raise _not_found()
        return sorted(target.tags)

    def put_tags(self, rq: Request, name: str | None = None) -> int:
        return self._tags_op("OP_TAGS_SET", rq, name)

    def delete_tags(self, rq: Request, name: str | None = None) -> int:
        return self._tags_op("OP_TAGS_DEL", rq, name)

    def _tags_op(self, op_id: str, rq: Request, name: str | None) -> int:
        kind, name, _ = self._tag_target(rq, name)
        op = {
            "dry_run": bool(rq.int("dry-run")),
            **OP_BASE,
            "reason": rq.reason_trail(),
            "OP_ID": op_id,
            "kind": kind,
            "tags": rq.args.get("tag", []),
            "name": name,
        }
        return self.sim.jobs.submit(op)

    # -- opcode writes ------------------------------------------------------------------

    def _fill(self, op_id: str, body: Any, static: dict[str, Any], rq: Request) -> int:
        """rlib2's FillOpcode: body parameters + static ones, checked."""
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise HttpError(400, "Invalid body parameters: body is not a dictionary")
        params = OP_PARAMS.get(op_id, {})
        clash = sorted(set(body) & set(static))
        if clash:
            raise HttpError(400, f"Can't overwrite static parameters {clash!r}")
        for key in body:
            if key not in params and key not in ("dry_run", "depends", "comment", "priority"):
                raise HttpError(
                    400,
                    f"Invalid body parameters: Object {op_id} doesn't support the"
                    f" parameter '{key}'",
                )
        op: dict[str, Any] = dict(OP_BASE)
        op["reason"] = rq.reason_trail()
        op["OP_ID"] = op_id
        op.update({k: v for k, v in params.items() if v is not None})
        op.update(static)
        op.update(body)
        return self.sim.jobs.submit(op)

    def op_body(self, op_id: str) -> Callable[..., int]:
        def handler(rq: Request, name: str) -> int:
            return self._fill(op_id, rq.body, {"instance_name": name}, rq)

        return handler

    def put_role(self, rq: Request, name: str) -> int:
        role = rq.body
        if not isinstance(role, str):
            raise HttpError(
                400, f"Body contents: Type is '{type(role).__name__}', but 'str' is expected"
            )
        if role == "regular":
            flags: dict[str, Any] = {"master_candidate": False, "offline": False, "drained": False}
        elif role == "master-candidate":
            flags = {"master_candidate": True, "offline": None, "drained": None}
        elif role == "drained":
            flags = {"master_candidate": None, "offline": None, "drained": True}
        elif role == "offline":
            flags = {"master_candidate": None, "offline": True, "drained": None}
        else:
            raise HttpError(400, f"Can't set '{role}' role")
        return self._fill(
            "OP_NODE_SET_PARAMS",
            {},
            {
                "node_name": name,
                **flags,
                "force": bool(rq.int("force")),
                "auto_promote": bool(rq.int("auto-promote")),
            },
            rq,
        )

    def post_node_modify(self, rq: Request, name: str) -> int:
        return self._fill("OP_NODE_SET_PARAMS", rq.body, {"node_name": name}, rq)

    def post_node_evacuate(self, rq: Request, name: str) -> int:
        return self._fill(
            "OP_NODE_EVACUATE", rq.body, {"node_name": name, "dry_run": bool(rq.int("dry-run"))}, rq
        )

    def post_replace_disks(self, rq: Request, name: str) -> int:
        if rq.body:
            data = rq.body
        elif rq.args:
            data = {
                k: rq.string(k)
                for k in ("remote_node", "mode", "iallocator")
                if rq.string(k) is not None
            }
        else:
            data = {}
        if isinstance(data, dict) and isinstance(data.get("disks"), str):
            try:
                data["disks"] = [int(p) for p in data["disks"].split(",")]
            except ValueError as err:
                raise HttpError(400, f"Invalid disk index passed: {err}") from err
        return self._fill("OP_INSTANCE_REPLACE_DISKS", data, {"instance_name": name}, rq)

    def post_reinstall(self, rq: Request, name: str) -> int:
        if rq.body:
            if rq.args:
                raise HttpError(400, "Can't combine query and body parameters")
            body = rq.body
        elif rq.args:
            body = {"os": rq.string("os"), "start": not rq.int("nostartup")}
        else:
            body = {}
        if not isinstance(body, dict):
            raise HttpError(400, "Invalid body contents, not a dictionary")
        start = body.get("start", True)
        if not isinstance(start, bool):
            raise HttpError(
                400, f"Parameter 'start': Type is '{type(start).__name__}', but 'bool' is expected"
            )
        # rlib2 builds these opcodes itself: no reason trail from the request.
        ops: list[dict[str, Any]] = [
            {
                **OP_BASE,
                "OP_ID": "OP_INSTANCE_SHUTDOWN",
                "instance_name": name,
                **OP_PARAMS["OP_INSTANCE_SHUTDOWN"],
            },
            {
                **OP_BASE,
                "OP_ID": "OP_INSTANCE_REINSTALL",
                "instance_name": name,
                "os_type": body.get("os"),
                "osparams": body.get("osparams"),
                "force_variant": False,
            },
        ]
        if start:
            ops.append(
                {**OP_BASE, "OP_ID": "OP_INSTANCE_STARTUP", "instance_name": name, "force": False}
            )
        return self.sim.jobs.submit(ops)

    def put_startup(self, rq: Request, name: str) -> int:
        return self._fill(
            "OP_INSTANCE_STARTUP",
            {},
            {
                "instance_name": name,
                "force": bool(rq.int("force")),
                "dry_run": bool(rq.int("dry-run")),
                "no_remember": bool(rq.int("no_remember")),
            },
            rq,
        )

    # -- jobs ---------------------------------------------------------------------------

    def get_jobs(self, rq: Request) -> Any:
        jobs = self.sim.jobs.jobs
        if rq.int("bulk"):
            return [j.to_json(bulk=True) for j in jobs.values()]
        return [{"id": j, "uri": f"/2/jobs/{j}"} for j in jobs]

    @staticmethod
    def _job_id(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise HttpError(400, f"Invalid job ID '{text}'") from None

    def get_job(self, rq: Request, job_id: str) -> Any:
        jid = self._job_id(job_id)
        job = self.sim.jobs.jobs.get(jid)
        if job is None:
            return lost_job_json(jid)
        return job.to_json()

    def delete_job(self, rq: Request, job_id: str) -> Any:
        jid = self._job_id(job_id)
        job = self.sim.jobs.jobs.get(jid)
        if job is None:
            return [False, f"Job {jid} not found"]
        if job.status == "queued":
            job.status = "canceled"
            job.opstatus = ["canceled"] * len(job.ops)
            return [True, f"Job {jid} canceled"]
        return [False, f"Job {jid} is no longer waiting in the queue"]

    def get_job_wait(self, rq: Request, job_id: str) -> Any:
        body = rq.body if isinstance(rq.body, dict) else {}
        if "fields" not in body:
            raise HttpError(400, "Required parameter 'fields' is missing")
        fields = body["fields"]
        prev_info = body.get("previous_job_info")
        prev_serial = body.get("previous_log_serial")
        if not isinstance(fields, list):
            raise HttpError(400, "The 'fields' parameter should be a list")
        if not (prev_info is None or isinstance(prev_info, list)):
            raise HttpError(400, "The 'previous_job_info' parameter should be a list")
        if not (prev_serial is None or isinstance(prev_serial, int)):
            raise HttpError(400, "The 'previous_log_serial' parameter should be a number")
        jid = self._job_id(job_id)
        job = self.sim.jobs.jobs.get(jid)
        if job is None:
            raise _not_found()
        known = set(job.to_json())
        for f in fields:
            if f not in known:
                raise HttpError(400, f"Unknown field '{f}'")

        def snapshot() -> Any:
            info = [job.to_json()[f] for f in fields]
            since = prev_serial or 0
            entries = [e for ops in job.oplog for e in ops if e[0] > since]
            if info == prev_info and not entries and job.status not in FINAL:
                return None
            if info == prev_info and not entries:
                return {"job_info": info, "log_entries": []}
            return {"job_info": info, "log_entries": entries}

        now = snapshot()
        if now is not None:
            return now
        result: Deferred[Any] = Deferred()
        clock = self.sim.clock

        def expire() -> None:
            if not result.called:
                result.callback(None)

        timer = clock.callLater(WAIT_TIMEOUT, expire)
        self._timers = [t for t in self._timers if t.active()] + [timer]

        def changed(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(snapshot())

        self.sim.jobs.changed(jid).addCallback(changed)
        return result
