"""Immutable snapshot of a Ganeti cluster, as maintd sees it.

These frozen ``attrs`` classes are the one vocabulary shared by the RAPI
loader (which builds them), the round steps, the harep logic, the balancer
and the simulator (which can rebuild a cluster from a serialised snapshot).

Units follow Ganeti: memory and disk in MiB.  Cross-links are by name:
``Node.primaries`` / ``Node.secondaries`` name instances,
``Instance.primary`` / ``Instance.secondaries`` name nodes,
``Node.group`` names a group (by name, not uuid).

``to_json`` / ``from_json`` give the documented snapshot file format written
by ``ganeti-maintd-snapshot -o FILE`` (``{"format": "ganeti-maintd-snapshot",
"version": 1, "cluster": {...}}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

SNAPSHOT_FORMAT = "ganeti-maintd-snapshot"
SNAPSHOT_VERSION = 1

#: Disk templates whose instances have a secondary node (network mirrored).
DRBD_TEMPLATES = frozenset({"drbd"})
#: Disk templates on storage every node of the group can reach.
SHARED_TEMPLATES = frozenset({"sharedfile", "rbd", "ext", "gluster", "blockdev_shared"})
#: Disk templates bound to the primary node that cannot be moved live.
LOCAL_TEMPLATES = frozenset({"plain", "file", "blockdev"})
#: Templates with no disks at all (movable anywhere like shared storage).
DISKLESS_TEMPLATES = frozenset({"diskless"})


def _tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


def _frozenset(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # Plain dicts are kept (attrs frozen stops rebinding, not mutation); the
    # convention is that nobody mutates a snapshot.
    return dict(value or {})


@attrs.frozen
class Group:
    name: str
    uuid: str
    alloc_policy: str = "preferred"
    ipolicy: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    nodes: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)
    networks: tuple[str, ...] = attrs.field(default=(), converter=_tuple)


@attrs.frozen
class Node:
    name: str
    uuid: str
    group: str
    pip: str = ""
    sip: str = ""
    offline: bool = False
    drained: bool = False
    master: bool = False
    master_candidate: bool = False
    master_capable: bool = True
    vm_capable: bool = True
    mtotal: int = 0
    mnode: int = 0
    mfree: int = 0
    dtotal: int = 0
    dfree: int = 0
    ctotal: int = 0
    cnos: int = 0
    cpu_speed: float = 1.0
    spindles_total: int = 0
    spindles_free: int = 0
    exclusive_storage: bool = False
    primaries: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    secondaries: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)

    @property
    def usable(self) -> bool:
        """True when instances may be placed here (online, undrained, vm capable)."""
        return not (self.offline or self.drained) and self.vm_capable


@attrs.frozen
class Instance:
    name: str
    uuid: str
    primary: str
    secondaries: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    disk_template: str = "diskless"
    admin_state: str = "up"  # up | down | offline
    oper_state: bool = True
    status: str = "running"
    memory: int = 0  # beparams maxmem, MiB
    minmem: int = 0
    vcpus: int = 1
    disk_sizes: tuple[int, ...] = attrs.field(default=(), converter=_tuple)
    spindles: tuple[int | None, ...] = attrs.field(default=(), converter=_tuple)
    spindle_use: int = 1
    auto_balance: bool = True
    always_failover: bool = False
    hypervisor: str = ""
    os: str = ""
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)
    #: Ganeti 2.16+ forthcoming instance (reserved, not yet created).
    forthcoming: bool = False

    @property
    def disk(self) -> int:
        """Total disk size in MiB."""
        return sum(self.disk_sizes)

    @property
    def secondary(self) -> str | None:
        return self.secondaries[0] if self.secondaries else None

    @property
    def is_drbd(self) -> bool:
        return self.disk_template in DRBD_TEMPLATES

    @property
    def is_shared(self) -> bool:
        return self.disk_template in SHARED_TEMPLATES or self.disk_template in DISKLESS_TEMPLATES

    @property
    def running(self) -> bool:
        return self.admin_state == "up"


@attrs.frozen
class Cluster:
    name: str
    master: str
    groups: Mapping[str, Group] = attrs.field(factory=dict, converter=_frozen_mapping)
    nodes: Mapping[str, Node] = attrs.field(factory=dict, converter=_frozen_mapping)
    instances: Mapping[str, Instance] = attrs.field(factory=dict, converter=_frozen_mapping)
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset)
    ipolicy: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    default_hypervisor: str = ""
    #: /2/info ``default_iallocator`` ("" when the cluster has none).
    default_iallocator: str = ""
    enabled_hypervisors: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    #: Ganeti 2.17 maintenance settings; None where /2/info lacks them (3.x).
    maint_round_delay: int | None = None
    maint_balance: bool | None = None
    maint_balance_threshold: float | None = None
    #: Objects the loader skipped, as (kind, name, reason).
    skipped: tuple[tuple[str, str, str], ...] = attrs.field(default=(), converter=_tuple)

    def group_of(self, node: str) -> Group | None:
        n = self.nodes.get(node)
        return self.groups.get(n.group) if n else None

    def instances_on(self, node: str) -> tuple[Instance, ...]:
        """Instances with ``node`` as primary or secondary."""
        return tuple(
            i for i in self.instances.values() if i.primary == node or node in i.secondaries
        )


def _encode(value: Any) -> Any:
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _as_dict(obj: Any) -> dict[str, Any]:
    return {a.name: _encode(getattr(obj, a.name)) for a in attrs.fields(type(obj))}


def to_json(cluster: Cluster) -> dict[str, Any]:
    """The snapshot file document for ``cluster`` (JSON-serialisable)."""
    body = _as_dict(cluster)
    body["groups"] = [_as_dict(g) for g in cluster.groups.values()]
    body["nodes"] = [_as_dict(n) for n in cluster.nodes.values()]
    body["instances"] = [_as_dict(i) for i in cluster.instances.values()]
    return {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "cluster": body}


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    names = {a.name for a in attrs.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def from_json(document: Mapping[str, Any]) -> Cluster:
    """Rebuild a :class:`Cluster` from :func:`to_json`'s document.

    Raises ``ValueError`` naming what is wrong when the document is not a
    snapshot of a version this code reads.
    """
    if not isinstance(document, Mapping) or document.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"not a {SNAPSHOT_FORMAT} document")
    if document.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported snapshot version {document.get('version')!r}")
    body = dict(document["cluster"])
    groups = {g["name"]: _build(Group, g) for g in body.pop("groups", [])}
    nodes = {n["name"]: _build(Node, n) for n in body.pop("nodes", [])}
    instances = {i["name"]: _build(Instance, i) for i in body.pop("instances", [])}
    body["skipped"] = [tuple(s) for s in body.get("skipped", [])]
    return _build(Cluster, {**body, "groups": groups, "nodes": nodes, "instances": instances})
