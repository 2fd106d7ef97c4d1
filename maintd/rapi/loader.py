"""Turn RAPI bulk answers into the immutable :mod:`maintd.model` snapshot.

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

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from maintd.model import Cluster, Group, Instance, Node

log = Logger()

_ADMIN_STATES = frozenset({"up", "down", "offline"})


#: Fields of ``/2/instances?bulk=1`` objects the loader reads.
INSTANCE_FIELDS = frozenset(
    {"name", "uuid", "pnode", "snodes", "disk_template", "admin_state", "oper_state",
     "status", "beparams", "disk.sizes", "disk.spindles", "hypervisor", "os", "tags"}
)
#: Fields of ``/2/nodes?bulk=1`` objects the loader reads.
NODE_FIELDS = frozenset(
    {"name", "uuid", "group.uuid", "pip", "sip", "offline", "drained", "role",
     "master_candidate", "master_capable", "vm_capable", "mtotal", "mnode", "mfree",
     "dtotal", "dfree", "ctotal", "cnos", "sptotal", "spfree", "ndparams", "tags"}
)


def trimming_decoder(marker: str, fields: frozenset[str]) -> Callable[[bytes], Any]:
    """A JSON decoder keeping only ``fields`` of the objects that have ``marker``.

    Bulk answers carry many fields maintd never reads (NIC lists, hvparams,
    custom_* copies); dropping them while parsing keeps a 20,000-instance
    snapshot's memory at a fraction of the full parse.  Objects without the
    marker (nested ones, or malformed entries) are kept whole.
    """

    def hook(obj: dict[str, Any]) -> Any:
        if marker in obj:
            return {k: obj[k] for k in fields if k in obj}
        return obj

    def decode(data: bytes) -> Any:
        return json.loads(data, object_hook=hook)

    return decode


decode_instances = trimming_decoder("pnode", INSTANCE_FIELDS)
decode_nodes = trimming_decoder("group.uuid", NODE_FIELDS)


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


def _instance(raw: Mapping[str, Any], default_hv: str) -> Instance:
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


def build_cluster(info: Any, groups: Any, nodes: Any, instances: Any) -> Cluster:
    """The :class:`Cluster` from the four parsed RAPI answers.

    Raises ``ValueError`` only when ``info`` is unusable or a bulk answer is
    not a list; bad individual objects are skipped and reported.
    """
    fields = _cluster_fields(info)
    raw_groups = _list(groups, "/2/groups?bulk=1")
    raw_nodes = _list(nodes, "/2/nodes?bulk=1")
    raw_instances = _list(instances, "/2/instances?bulk=1")
    skipped: list[tuple[str, str, str]] = []

    def skip(kind: str, name: str, why: str) -> None:
        log.warn("RAPI {kind} {name} skipped: {why}", kind=kind, name=name, why=why)
        skipped.append((kind, name, why))

    group_objs: dict[str, Group] = {}
    group_names: dict[str, str] = {}
    for i, raw in enumerate(raw_groups):
        try:
            if not isinstance(raw, dict):
                raise _Bad(f"expected an object, got {type(raw).__name__}")
            g = _group(raw)
            if g.name in group_objs:
                raise _Bad("duplicate name")
        except _Bad as e:
            skip("group", _name_of(raw, "group", i), str(e))
            continue
        group_objs[g.name] = g
        group_names[g.uuid] = g.name

    master = fields["master"]
    node_objs: dict[str, Node] = {}
    for i, raw in enumerate(raw_nodes):
        try:
            if not isinstance(raw, dict):
                raise _Bad(f"expected an object, got {type(raw).__name__}")
            n = _node(raw, group_names, master)
            if n.name in node_objs:
                raise _Bad("duplicate name")
        except _Bad as e:
            skip("node", _name_of(raw, "node", i), str(e))
            continue
        node_objs[n.name] = n

    default_hv = fields["default_hypervisor"]
    inst_objs: dict[str, Instance] = {}
    primaries: dict[str, list[str]] = {n: [] for n in node_objs}
    secondaries: dict[str, list[str]] = {n: [] for n in node_objs}
    for i, raw in enumerate(raw_instances):
        try:
            if not isinstance(raw, dict):
                raise _Bad(f"expected an object, got {type(raw).__name__}")
            inst = _instance(raw, default_hv)
            if inst.name in inst_objs:
                raise _Bad("duplicate name")
            if inst.primary not in node_objs:
                raise _Bad(f"primary node {inst.primary} is not a known node")
            for s in inst.secondaries:
                if s not in node_objs:
                    raise _Bad(f"secondary node {s} is not a known node")
        except _Bad as e:
            skip("instance", _name_of(raw, "instance", i), str(e))
            continue
        inst_objs[inst.name] = inst
        primaries[inst.primary].append(inst.name)
        for s in inst.secondaries:
            secondaries[s].append(inst.name)

    members: dict[str, list[str]] = {g: [] for g in group_objs}
    for name, n in node_objs.items():
        members[n.group].append(name)
        node_objs[name] = _evolve_node(n, primaries[name], secondaries[name])
    for gname, g in group_objs.items():
        group_objs[gname] = _evolve_group(g, members[gname])

    return Cluster(
        groups=group_objs,
        nodes=node_objs,
        instances=inst_objs,
        skipped=skipped,
        **fields,
    )


def _evolve_node(n: Node, prim: list[str], sec: list[str]) -> Node:
    return attrs.evolve(n, primaries=prim, secondaries=sec)


def _evolve_group(g: Group, nodes: list[str]) -> Group:
    return attrs.evolve(g, nodes=nodes)
