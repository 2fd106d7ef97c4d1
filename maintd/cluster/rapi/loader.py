"""Turn RAPI bulk answers into the immutable :mod:`maintd.cluster.model` snapshot.

Inputs are the parsed JSON of ``/2/info``, ``/2/groups?bulk=1``,
``/2/nodes?bulk=1`` and ``/2/instances?bulk=1``.  Every object is checked
for the fields maintd relies on; one that does not fit is reported by name
(a log line and an entry in ``Cluster.skipped``) and left out, the rest of
the cluster still loads.  Only an unusable ``/2/info`` or a bulk answer
that is not a list fails the whole load (``ValueError``).

Cross-links are rebuilt from what loaded: a node lists as primaries and
secondaries exactly the loaded instances that name it, a group lists its
loaded nodes; an instance on an unknown node and a node in an unknown group
are skipped (reported) rather than left dangling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from maintd.cluster.model import Cluster, Group, Instance, Node
from maintd.common import strictjson

log = Logger()

_ADMIN_STATES = frozenset({"up", "down", "offline"})


class _Bad(Exception):
    """One object does not have the expected shape (message says why)."""


def _str(obj: Mapping[str, Any], key: str) -> str:
    v = obj.get(key)
    if type(v) is not str or not v:
        raise _Bad(f"{key} must be a non-empty string, got {v!r}")
    return v


def _opt_str(obj: Mapping[str, Any], key: str, default: str = "") -> str:
    v = obj.get(key)
    if v is None:
        return default
    if type(v) is not str:
        raise _Bad(f"{key} must be a string, got {v!r}")
    return v


def _bool(obj: Mapping[str, Any], key: str, default: bool = False) -> bool:
    v = obj.get(key)
    if v is None:
        return default
    if type(v) is not bool:
        raise _Bad(f"{key} must be a boolean, got {v!r}")
    return v


def _int(obj: Mapping[str, Any], key: str, default: int = 0) -> int:
    """An integer figure; null (offline node, unknown) gives ``default``."""
    v = obj.get(key)
    if v is None:
        return default
    t = type(v)
    if t is int:
        return v  # type: ignore[no-any-return]
    if t is float and v.is_integer():
        return int(v)
    raise _Bad(f"{key} must be an integer, got {v!r}")


def _num(obj: Mapping[str, Any], key: str, default: float) -> float:
    v = obj.get(key)
    if v is None:
        return default
    if type(v) not in (int, float):
        raise _Bad(f"{key} must be a number, got {v!r}")
    return float(v)


def _strs(obj: Mapping[str, Any], key: str) -> list[str]:
    v = obj.get(key)
    if v is None:
        return []
    if type(v) is not list or any(type(s) is not str for s in v):
        raise _Bad(f"{key} must be a list of strings, got {v!r}")
    return v


def _dict(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = obj.get(key)
    if v is None:
        return {}
    if type(v) is not dict:
        raise _Bad(f"{key} must be an object, got {v!r}")
    return v


def _name_of(obj: Any, kind: str, index: int) -> str:
    if isinstance(obj, Mapping) and isinstance(obj.get("name"), str) and obj["name"]:
        return str(obj["name"])
    return f"<{kind} #{index}>"


def _list(doc: Any, what: str) -> list[Any]:
    if not isinstance(doc, list):
        raise ValueError(f"{what}: expected a list, got {type(doc).__name__}")
    return doc


def _group(raw: Mapping[str, Any]) -> Group:
    return Group(
        name=_str(raw, "name"),
        uuid=_str(raw, "uuid"),
        alloc_policy=_opt_str(raw, "alloc_policy", "preferred"),
        ipolicy=_dict(raw, "ipolicy"),
        tags=_strs(raw, "tags"),
        networks=_strs(raw, "networks") if type(raw.get("networks")) is list else (),
    )


def _node(raw: Mapping[str, Any], group_names: Mapping[str, str], master: str) -> Node:
    name = _str(raw, "name")
    guuid = _str(raw, "group.uuid")
    group = group_names.get(guuid)
    if group is None:
        raise _Bad(f"group.uuid {guuid} names no known group")
    nd = _dict(raw, "ndparams")
    spindle_count = _int(nd, "spindle_count", 1)
    sptotal = _int(raw, "sptotal", spindle_count)
    role = raw.get("role")
    return Node(
        name=name,
        uuid=_str(raw, "uuid"),
        group=group,
        pip=_opt_str(raw, "pip"),
        sip=_opt_str(raw, "sip"),
        offline=_bool(raw, "offline"),
        drained=_bool(raw, "drained"),
        master=role == "M" or name == master,
        master_candidate=_bool(raw, "master_candidate"),
        master_capable=_bool(raw, "master_capable", True),
        vm_capable=_bool(raw, "vm_capable", True),
        mtotal=_int(raw, "mtotal"),
        mnode=_int(raw, "mnode"),
        mfree=_int(raw, "mfree"),
        dtotal=_int(raw, "dtotal"),
        dfree=_int(raw, "dfree"),
        ctotal=_int(raw, "ctotal"),
        cnos=_int(raw, "cnos"),
        cpu_speed=_num(nd, "cpu_speed", 1.0),
        spindles_total=sptotal,
        spindles_free=_int(raw, "spfree", sptotal),
        exclusive_storage=_bool(nd, "exclusive_storage"),
        tags=_strs(raw, "tags"),
    )


def _str_list(v: Any) -> bool:
    return type(v) is list and (not v or all(type(s) is str for s in v))


def _instance_fast(raw: dict[str, Any], default_hv: str) -> Instance | None:
    """:func:`_instance` for the common, fully well-formed object (None otherwise).

    The loader's hot path on big clusters: plain type checks on locals
    instead of one helper call per field.
    """
    get = raw.get
    name, uuid, pnode, dt = get("name"), get("uuid"), get("pnode"), get("disk_template")
    be = get("beparams")
    if not (
        type(name) is str and name and type(uuid) is str and uuid
        and type(pnode) is str and pnode and type(dt) is str and dt and type(be) is dict
    ):
        return None
    bget = be.get
    maxmem, minmem, vcpus = bget("maxmem"), bget("minmem"), bget("vcpus")
    spindle_use, auto_balance = bget("spindle_use"), bget("auto_balance")
    always_failover = bget("always_failover")
    if not (
        type(maxmem) is int and type(minmem) is int and type(vcpus) is int
        and type(spindle_use) is int and type(auto_balance) is bool
        and type(always_failover) is bool
    ):
        return None
    admin_state, status, os_name = get("admin_state"), get("status"), get("os")
    oper, hv = get("oper_state"), get("hypervisor", default_hv)
    if not (
        admin_state in _ADMIN_STATES and type(status) is str and type(os_name) is str
        and type(oper) is bool and type(hv) is str
    ):
        return None
    snodes: Any = get("snodes")
    tags: Any = get("tags")
    sizes, spindles = get("disk.sizes"), get("disk.spindles")
    if not (
        _str_list(snodes) and _str_list(tags)
        and type(sizes) is list and all(type(x) is int for x in sizes)
        and type(spindles) is list and len(spindles) == len(sizes)
        and all(x is None or type(x) is int for x in spindles)
    ):
        return None
    return Instance(
        name=name,
        uuid=uuid,
        primary=pnode,
        secondaries=snodes,
        disk_template=dt,
        admin_state=admin_state,
        oper_state=oper,
        status=status,
        memory=maxmem,
        minmem=minmem,
        vcpus=vcpus,
        disk_sizes=sizes,
        spindles=spindles,
        spindle_use=spindle_use,
        auto_balance=auto_balance,
        always_failover=always_failover,
        hypervisor=hv or default_hv,
        os=os_name,
        tags=tags,
    )


def _instance(raw: Mapping[str, Any], default_hv: str) -> Instance:
    if type(raw) is dict:
        fast = _instance_fast(raw, default_hv)
        if fast is not None:
            return fast
    return _instance_checked(raw, default_hv)


def _instance_checked(raw: Mapping[str, Any], default_hv: str) -> Instance:
    """Field-by-field conversion with defaults and a precise error (:class:`_Bad`)."""
    be = _dict(raw, "beparams")
    admin_state = _opt_str(raw, "admin_state", "up")
    if admin_state not in _ADMIN_STATES:
        raise _Bad(f"admin_state must be one of up/down/offline, got {admin_state!r}")
    maxmem = be.get("maxmem")
    memory = _int(be, "maxmem") if maxmem is not None else _int(be, "memory")
    sizes = raw.get("disk.sizes")
    if sizes is None:
        sizes = []
    elif type(sizes) is not list or any(type(s) is not int for s in sizes):
        raise _Bad(f"disk.sizes must be a list of integers, got {sizes!r}")
    spindles = raw.get("disk.spindles")
    if spindles is None:
        spindles = [None] * len(sizes)
    elif type(spindles) is not list or any(
        s is not None and type(s) is not int for s in spindles
    ):
        raise _Bad(f"disk.spindles must be a list of integers or nulls, got {spindles!r}")
    oper = raw.get("oper_state")
    return Instance(
        name=_str(raw, "name"),
        uuid=_str(raw, "uuid"),
        primary=_str(raw, "pnode"),
        secondaries=_strs(raw, "snodes"),
        disk_template=_str(raw, "disk_template"),
        admin_state=admin_state,
        oper_state=bool(oper) if type(oper) is bool else False,
        status=_opt_str(raw, "status", ""),
        memory=memory,
        minmem=_int(be, "minmem", memory),
        vcpus=_int(be, "vcpus", 1),
        disk_sizes=sizes,
        spindles=spindles,
        spindle_use=_int(be, "spindle_use", 1),
        auto_balance=_bool(be, "auto_balance", True),
        always_failover=_bool(be, "always_failover"),
        hypervisor=_opt_str(raw, "hypervisor", default_hv) or default_hv,
        os=_opt_str(raw, "os"),
        tags=_strs(raw, "tags"),
    )


def _cluster_fields(info: Any) -> dict[str, Any]:
    if not isinstance(info, Mapping):
        raise ValueError(f"/2/info: expected an object, got {type(info).__name__}")
    try:
        fields: dict[str, Any] = {
            "name": _str(info, "name"),
            "master": _str(info, "master"),
            "tags": _strs(info, "tags"),
            "ipolicy": _dict(info, "ipolicy"),
            "default_hypervisor": _opt_str(info, "default_hypervisor"),
            "default_iallocator": _opt_str(info, "default_iallocator"),
            "enabled_hypervisors": _strs(info, "enabled_hypervisors"),
        }
        # Ganeti 2.17 only; 3.x lacks them (then they stay None).
        if info.get("maint_round_delay") is not None:
            fields["maint_round_delay"] = _int(info, "maint_round_delay")
        if info.get("maint_balance") is not None:
            fields["maint_balance"] = _bool(info, "maint_balance")
        if info.get("maint_balance_threshold") is not None:
            fields["maint_balance_threshold"] = _num(info, "maint_balance_threshold", 0.1)
    except _Bad as e:
        raise ValueError(f"/2/info: {e}") from None
    return fields


@attrs.frozen
class _Skipped:
    """An object the decoder already found bad (kept for reporting)."""

    name: str
    reason: str


class ClusterBuilder:
    """Builds a :class:`Cluster` step by step: info and groups, then nodes,
    then instances.

    ``decode_nodes`` / ``decode_instances`` parse a bulk answer's raw bytes
    straight into model objects (a JSON ``object_hook`` converts each node
    or instance object as soon as it is parsed), so the large answers never
    exist as a list of full dicts: a 20,000-instance snapshot needs a
    fraction of the memory of ``json.loads`` followed by conversion.
    """

    def __init__(self, info: Any, groups: Any) -> None:
        self.fields = _cluster_fields(info)
        self.master: str = self.fields["master"]
        self.default_hv: str = self.fields["default_hypervisor"]
        self.skipped: list[tuple[str, str, str]] = []
        self.groups: dict[str, Group] = {}
        self.group_names: dict[str, str] = {}
        self.nodes: dict[str, Node] = {}
        self.instances: dict[str, Instance] = {}
        for i, raw in enumerate(_list(groups, "/2/groups?bulk=1")):
            try:
                if not isinstance(raw, dict):
                    raise _Bad(f"expected an object, got {type(raw).__name__}")
                g = _group(raw)
                if g.name in self.groups:
                    raise _Bad("duplicate name")
            except _Bad as e:
                self.skip("group", _name_of(raw, "group", i), str(e))
                continue
            self.groups[g.name] = g
            self.group_names[g.uuid] = g.name

    def skip(self, kind: str, name: str, why: str) -> None:
        log.warn("RAPI {kind} {name} skipped: {why}", kind=kind, name=name, why=why)
        self.skipped.append((kind, name, why))

    # -- decoding bytes straight to model objects ---------------------------

    def decode_nodes(self, data: bytes | str) -> Any:
        """Parse ``/2/nodes?bulk=1`` bytes; node objects become :class:`Node`."""
        group_names, master = self.group_names, self.master

        def hook(obj: dict[str, Any]) -> Any:
            if "group.uuid" not in obj:
                return obj
            try:
                return _node(obj, group_names, master)
            except _Bad as e:
                return _Skipped(_name_of(obj, "node", -1), str(e))

        return strictjson.loads(data, "RAPI /2/nodes?bulk=1", max_depth=None, object_hook=hook)

    def decode_instances(self, data: bytes | str) -> Any:
        """Parse ``/2/instances?bulk=1`` bytes; instance objects become :class:`Instance`."""
        default_hv = self.default_hv

        def hook(obj: dict[str, Any]) -> Any:
            if "pnode" not in obj:
                return obj
            try:
                return _instance(obj, default_hv)
            except _Bad as e:
                return _Skipped(_name_of(obj, "instance", -1), str(e))

        return strictjson.loads(
            data, "RAPI /2/instances?bulk=1", max_depth=None, object_hook=hook
        )

    # -- adding parsed answers ----------------------------------------------

    def add_nodes(self, nodes: Any) -> None:
        """Add the parsed ``/2/nodes?bulk=1`` answer (dicts or decoded objects)."""
        group_names, master, known = self.group_names, self.master, self.nodes
        for i, raw in enumerate(_list(nodes, "/2/nodes?bulk=1")):
            if type(raw) is _Skipped:
                self.skip("node", raw.name, raw.reason)
                continue
            try:
                if type(raw) is Node:
                    n = raw
                elif isinstance(raw, dict):
                    n = _node(raw, group_names, master)
                else:
                    raise _Bad(f"expected an object, got {type(raw).__name__}")
                if n.name in known:
                    raise _Bad("duplicate name")
            except _Bad as e:
                self.skip("node", _name_of(raw, "node", i), str(e))
                continue
            known[n.name] = n

    def add_instances(self, instances: Any) -> None:
        """Add the parsed ``/2/instances?bulk=1`` answer (after the nodes)."""
        default_hv, nodes, known = self.default_hv, self.nodes, self.instances
        for i, raw in enumerate(_list(instances, "/2/instances?bulk=1")):
            if type(raw) is _Skipped:
                self.skip("instance", raw.name, raw.reason)
                continue
            try:
                if type(raw) is Instance:
                    inst = raw
                elif isinstance(raw, dict):
                    inst = _instance(raw, default_hv)
                else:
                    raise _Bad(f"expected an object, got {type(raw).__name__}")
                if inst.name in known:
                    raise _Bad("duplicate name")
                if inst.primary not in nodes:
                    raise _Bad(f"primary node {inst.primary} is not a known node")
                for s in inst.secondaries:
                    if s not in nodes:
                        raise _Bad(f"secondary node {s} is not a known node")
            except _Bad as e:
                self.skip("instance", _name_of(raw, "instance", i), str(e))
                continue
            known[inst.name] = inst

    def cluster(self) -> Cluster:
        """The :class:`Cluster`, with cross-links rebuilt from what loaded."""
        primaries: dict[str, list[str]] = {n: [] for n in self.nodes}
        secondaries: dict[str, list[str]] = {n: [] for n in self.nodes}
        for inst in self.instances.values():
            primaries[inst.primary].append(inst.name)
            for s in inst.secondaries:
                secondaries[s].append(inst.name)
        members: dict[str, list[str]] = {g: [] for g in self.groups}
        nodes = {}
        for name, n in self.nodes.items():
            members[n.group].append(name)
            nodes[name] = attrs.evolve(n, primaries=primaries[name], secondaries=secondaries[name])
        groups = {g: attrs.evolve(grp, nodes=members[g]) for g, grp in self.groups.items()}
        return Cluster(
            groups=groups,
            nodes=nodes,
            instances=self.instances,
            skipped=self.skipped,
            **self.fields,
        )


def build_cluster(info: Any, groups: Any, nodes: Any, instances: Any) -> Cluster:
    """The :class:`Cluster` from the four parsed RAPI answers.

    Raises ``ValueError`` only when ``info`` is unusable or a bulk answer is
    not a list; bad individual objects are skipped and reported.
    """
    b = ClusterBuilder(info, groups)
    b.add_nodes(nodes)
    b.add_instances(instances)
    return b.cluster()


def parse_query_column(answer: Any, key: str, value: str) -> dict[str, Any]:
    """``{key: value}`` per row of a Ganeti QueryResponse (``/2/query/...``).

    The answer is ``{"fields": [{"name": ...}, ...], "data": [[[status,
    value], ...], ...]}``; only rows where both cells have status 0 (normal)
    count.  Raises ``ValueError`` naming what is wrong with the shape.
    """
    if not isinstance(answer, dict):
        raise ValueError("query answer is not a JSON object")
    fields, data = answer.get("fields"), answer.get("data")
    if not isinstance(fields, list) or not isinstance(data, list):
        raise ValueError("query answer lacks 'fields' or 'data' lists")
    names = [f.get("name") if isinstance(f, dict) else None for f in fields]
    try:
        ki, vi = names.index(key), names.index(value)
    except ValueError:
        raise ValueError(f"query answer lacks the fields {key!r} and {value!r}") from None
    out: dict[str, Any] = {}
    for row in data:
        if not isinstance(row, list) or len(row) != len(names):
            raise ValueError(f"query row has the wrong shape: {str(row)[:80]!r}")
        kcell, vcell = row[ki], row[vi]
        if (
            isinstance(kcell, list) and len(kcell) == 2 and kcell[0] == 0
            and isinstance(vcell, list) and len(vcell) == 2 and vcell[0] == 0
            and isinstance(kcell[1], str)
        ):
            out[kcell[1]] = vcell[1]
    return out
