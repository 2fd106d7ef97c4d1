"""Loading a simulated cluster: scenario files, hbal text files, snapshots.

:func:`load` tells the three apart by content:

* a ``ganeti-maintd-snapshot`` document (JSON or YAML, :func:`maintd.cluster.model.to_json`);
* a scenario (JSON or YAML object with ``nodes``)::

    {"name": "cluster.example.com", "master": "node1",
     "tags": [], "ipolicy": {...},                      # optional
     "defaults": {"node": {...}, "instance": {...}},     # optional
     "groups": [{"name": "g1", "alloc_policy": "preferred", "tags": [], "ipolicy": {}}],
     "nodes": [{"name": "node1", "group": "g1", "mtotal": 65536, "mnode": 1024,
                "dtotal": 1000000, "ctotal": 16, "drained": false, "offline": false,
                "tags": [], "diagnose": {"status": "Ok"}, "cpu_load": 1.5,
                "mond": "up"}],
     "instances": [{"name": "inst1", "primary": "node1", "secondary": "node2",
                    "disk_template": "drbd", "memory": 2048, "vcpus": 2,
                    "disks": [10240], "admin_state": "up", "tags": [], "os": "debian",
                    "hypervisor": "kvm"}],
     "events": [{"at": 60, "node": "node5", "diagnose": {"status": "evacuate", ...}},
                {"at": 90, "node": "node3", "mond": "down"},
                {"at": 120, "node": "node4", "offline": true},
                {"at": 30, "fail_next": 1}, {"at": 10, "rapi": {"status": 503}}]}

* anything else is read as an hbal text data file (``hbal -t``), through
  :func:`maintd.decide.balance.text.parse_text`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from importlib import resources
from typing import Any

import attrs
import yaml

from maintd.cluster import model
from maintd.common import strictjson
from maintd.sim.cluster import DRBD_META_MIB, new_uuid
from maintd.sim.faults import MOND_MODES

NODE_DEFAULTS: dict[str, Any] = {
    "mtotal": 65536,
    "mnode": 1024,
    "dtotal": 1024 * 1024,
    "ctotal": 16,
}
INSTANCE_DEFAULTS: dict[str, Any] = {
    "memory": 1024,
    "vcpus": 1,
    "disks": [10240],
    "admin_state": "up",
    "os": "debootstrap+default",
    "hypervisor": "kvm",
}
EVENT_KEYS = frozenset(
    {"at", "node", "diagnose", "mond", "offline", "cpu_load", "fail_next", "rapi", "comment"}
)
#: The keys each object of a scenario may have: anything else is a mistake
#: (say ``memory`` on a node, meaning ``mtotal``) that must not pass silently.
TOP_KEYS = frozenset(
    {"name", "master", "tags", "ipolicy", "defaults", "groups", "nodes", "instances", "events",
     "default_hypervisor", "enabled_hypervisors", "comment"}
)
GROUP_KEYS = frozenset({"name", "uuid", "alloc_policy", "ipolicy", "tags", "comment"})
NODE_KEYS = frozenset(
    {"name", "uuid", "group", "offline", "drained", "master_candidate", "master_capable",
     "vm_capable", "mtotal", "mnode", "mfree", "dtotal", "dfree", "ctotal", "cnos",
     "cpu_speed", "spindles", "tags", "diagnose", "cpu_load", "mond", "comment"}
)
INSTANCE_KEYS = frozenset(
    {"name", "uuid", "primary", "pnode", "secondary", "secondaries", "snode",
     "disk_template", "admin_state", "memory", "minmem", "vcpus", "disks", "spindle_use",
     "auto_balance", "hypervisor", "os", "tags", "comment"}
)


class ScenarioError(ValueError):
    """The scenario cannot be loaded; the message names the file and the object."""


@attrs.frozen
class Scenario:
    cluster: model.Cluster
    events: tuple[dict[str, Any], ...] = ()
    diagnose: Mapping[str, Any] = attrs.field(factory=dict)
    cpu_load: Mapping[str, float] = attrs.field(factory=dict)
    mond: Mapping[str, str] = attrs.field(factory=dict)
    source: str = ""


def demo_path() -> str:
    """Path of the built-in demo scenario."""
    return str(resources.files("maintd.sim").joinpath("scenarios/demo.json"))


def load(path: str | None) -> Scenario:
    """Load ``path`` (None: the built-in demo)."""
    path = path or demo_path()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ScenarioError(f"cannot read scenario {path}: {err.strerror}") from err
    return loads(text, path)


def loads(text: str, source: str = "<scenario>") -> Scenario:
    doc = _structured(text, source)
    if isinstance(doc, Mapping) and doc.get("format") == model.SNAPSHOT_FORMAT:
        try:
            return Scenario(cluster=model.from_json(doc), source=source)
        except (ValueError, TypeError, KeyError) as err:
            raise ScenarioError(f"{source}: bad snapshot: {err}") from err
    if isinstance(doc, Mapping) and "nodes" in doc:
        return from_scenario(doc, source)
    if isinstance(doc, Mapping | list) and doc is not None:
        raise ScenarioError(
            f"{source}: neither a scenario (no 'nodes') nor a {model.SNAPSHOT_FORMAT} document"
        )
    return from_hbal_text(text, source)


def _structured(text: str, source: str) -> Any:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return strictjson.loads(text, source)
        except strictjson.StrictJSONError as err:
            raise ScenarioError(f"{source}: malformed JSON: {err.problem}") from None
    if "|" in text.split("\n", 1)[0]:
        return None  # hbal text: first line is a group line with '|'
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        # Without a '|' on its first line it cannot be hbal text either.
        raise ScenarioError(f"{source}: malformed YAML: {err}") from err
    return doc if isinstance(doc, Mapping) else None


def from_hbal_text(text: str, source: str) -> Scenario:
    try:
        from maintd.decide.balance.text import parse_text  # type: ignore[import-not-found]
    except ImportError as err:
        raise ScenarioError(
            f"{source}: hbal text data files need maintd.decide.balance.text (not available)"
        ) from err
    try:
        cluster = parse_text(text)
    except ValueError as err:
        raise ScenarioError(f"{source}: bad hbal text data: {err}") from err
    # hbal's text figure for an instance's disk is Ganeti's disk_usage, which
    # for DRBD includes 128 MiB of metadata per disk; keep the usage the same.
    instances = {
        name: attrs.evolve(inst, disk_sizes=[max(0, d - DRBD_META_MIB) for d in inst.disk_sizes])
        if inst.is_drbd
        else inst
        for name, inst in cluster.instances.items()
    }
    # The text format names no hypervisor and hbal -t assumes Xen; hbal -m on
    # a KVM cluster would reserve 4 GiB per node, so keep the Xen semantics.
    hv = cluster.default_hypervisor or "xen-pvm"
    instances = {n: attrs.evolve(i, hypervisor=i.hypervisor or hv) for n, i in instances.items()}
    cluster = attrs.evolve(
        cluster,
        instances=instances,
        default_hypervisor=hv,
        enabled_hypervisors=cluster.enabled_hypervisors or (hv,),
    )
    return Scenario(cluster=cluster, source=source)


def _need(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ScenarioError(f"{where}: missing '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ScenarioError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ScenarioError(f"{where}: '{key}' must be a non-negative integer, not {value!r}")
    return value


def _object(value: Any, where: str, allowed: frozenset[str], hint: str = "") -> Mapping[str, Any]:
    """``value`` as a mapping with only ``allowed`` keys, else a ScenarioError naming ``where``."""
    if not isinstance(value, Mapping):
        raise ScenarioError(f"{where}: must be an object, not {value!r}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        raise ScenarioError(
            f"{where}: unknown key(s) {keys}{hint}; known keys: {', '.join(sorted(allowed))}"
        )
    return value


def _named(value: Any) -> str:
    name = value.get("name", "?") if isinstance(value, Mapping) else "?"
    return str(name)


def _secondary(spec: Mapping[str, Any], where: str) -> Any:
    """The secondary node: ``secondary``/``snode``, or ``secondaries`` as RAPI spells it."""
    if "secondaries" in spec:
        secs = spec["secondaries"]
        if not isinstance(secs, list) or len(secs) > 1:
            raise ScenarioError(f"{where}: 'secondaries' must list at most one secondary node")
        return secs[0] if secs else None
    return spec.get("secondary") or spec.get("snode")


def from_scenario(doc: Mapping[str, Any], source: str) -> Scenario:
    _object(doc, source, TOP_KEYS, " ('name' is the cluster name)" if "cluster" in doc else "")
    defaults = doc.get("defaults") or {}
    _object(defaults, f"{source}: defaults", frozenset({"node", "instance"}))
    node_defaults = {**NODE_DEFAULTS, **_object(defaults.get("node") or {},
                                                  f"{source}: defaults.node", NODE_KEYS)}
    inst_defaults = {**INSTANCE_DEFAULTS, **_object(defaults.get("instance") or {},
                                                     f"{source}: defaults.instance",
                                                     INSTANCE_KEYS)}
    groups: dict[str, model.Group] = {}
    for g in doc.get("groups") or []:
        g = _object(g, f"{source}: group {_named(g)}", GROUP_KEYS)
        name = _need(g, "name", str, f"{source}: group")
        groups[name] = model.Group(
            name=name,
            uuid=g.get("uuid") or new_uuid(),
            alloc_policy=g.get("alloc_policy", "preferred"),
            ipolicy=g.get("ipolicy") or {},
            tags=g.get("tags") or (),
        )
    nodes: dict[str, model.Node] = {}
    diagnose: dict[str, Any] = {}
    cpu_load: dict[str, float] = {}
    mond: dict[str, str] = {}
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ScenarioError(f"{source}: 'nodes' must be a non-empty list")
    first = _object(raw_nodes[0], f"{source}: node {_named(raw_nodes[0])}", NODE_KEYS)
    master = doc.get("master") or _need(first, "name", str, f"{source}: node")
    for raw in raw_nodes:
        where = f"{source}: node {_named(raw)}"
        hint = " (memory is 'mtotal', disk 'dtotal', CPUs 'ctotal')" if isinstance(
            raw, Mapping) and {"memory", "disk", "cpus"} & set(raw) else ""
        spec = {**node_defaults, **_object(raw, where, NODE_KEYS, hint)}
        name = _need(spec, "name", str, where)
        if name in nodes:
            raise ScenarioError(f"{where}: duplicate node")
        group = spec.get("group", "default")
        if group not in groups:
            groups[group] = model.Group(name=group, uuid=new_uuid())
        mtotal, mnode, dtotal = (_int(spec, k, where) for k in ("mtotal", "mnode", "dtotal"))
        ctotal = _int(spec, "ctotal", where)
        nodes[name] = model.Node(
            name=name,
            uuid=spec.get("uuid") or new_uuid(),
            group=group,
            offline=bool(spec.get("offline", False)),
            drained=bool(spec.get("drained", False)),
            master=name == master,
            master_candidate=bool(spec.get("master_candidate", name == master)),
            master_capable=bool(spec.get("master_capable", True)),
            vm_capable=bool(spec.get("vm_capable", True)),
            mtotal=mtotal,
            mnode=mnode,
            mfree=spec.get("mfree", 0),
            dtotal=dtotal,
            dfree=spec.get("dfree", 0),
            ctotal=ctotal,
            cnos=spec.get("cnos", 1),
            cpu_speed=float(spec.get("cpu_speed", 1.0)),
            spindles_total=spec.get("spindles", 0),
            tags=spec.get("tags") or (),
        )
        if "diagnose" in spec:
            diagnose[name] = spec["diagnose"]
        if "cpu_load" in spec:
            cpu_load[name] = float(spec["cpu_load"])
        if "mond" in spec:
            if spec["mond"] not in MOND_MODES:
                raise ScenarioError(f"{where}: mond must be one of {sorted(MOND_MODES)}")
            mond[name] = spec["mond"]
    if master not in nodes:
        raise ScenarioError(f"{source}: master {master!r} is not a node")
    head = nodes[master]
    if head.offline or head.drained or not head.master_candidate:
        # Ganeti cannot get there: "The master role can be changed only via
        # master-failover" (LUNodeSetParams), so neither can a scenario.
        flag = "offline" if head.offline else "drained" if head.drained else "not a candidate"
        raise ScenarioError(
            f"{source}: node {master}: the master cannot be {flag} (Ganeti: the master "
            "role can be changed only via master-failover)"
        )
    instances: dict[str, model.Instance] = {}
    for raw in doc.get("instances") or []:
        where = f"{source}: instance {_named(raw)}"
        spec = {**inst_defaults, **_object(raw, where, INSTANCE_KEYS)}
        name = _need(spec, "name", str, where)
        if name in instances:
            raise ScenarioError(f"{where}: duplicate instance")
        primary = spec.get("primary") or spec.get("pnode")
        if primary not in nodes:
            raise ScenarioError(f"{where}: primary node {primary!r} is not a node")
        secondary = _secondary(spec, where)
        template = spec.get("disk_template") or ("drbd" if secondary else "plain")
        if template in model.DRBD_TEMPLATES:
            if secondary not in nodes:
                raise ScenarioError(f"{where}: drbd needs a secondary node, not {secondary!r}")
            if secondary == primary:
                raise ScenarioError(f"{where}: secondary is the primary node")
        elif secondary:
            raise ScenarioError(f"{where}: disk template {template} has no secondary node")
        disks = [] if template == "diskless" else list(spec.get("disks") or [])
        if spec.get("admin_state") not in ("up", "down", "offline"):
            raise ScenarioError(f"{where}: admin_state must be up, down or offline")
        instances[name] = model.Instance(
            name=name,
            uuid=spec.get("uuid") or new_uuid(),
            primary=primary,
            secondaries=[secondary] if secondary else [],
            disk_template=template,
            admin_state=spec["admin_state"],
            memory=_int(spec, "memory", where),
            minmem=spec.get("minmem", spec["memory"]),
            vcpus=_int(spec, "vcpus", where),
            disk_sizes=disks,
            spindles=[None] * len(disks),
            spindle_use=spec.get("spindle_use", 1),
            auto_balance=bool(spec.get("auto_balance", True)),
            hypervisor=spec.get("hypervisor", "kvm"),
            os=spec.get("os", "debootstrap+default"),
            tags=spec.get("tags") or (),
        )
    # Nodes get free memory/disk from their instances: mfree/dfree are
    # derived unless the scenario gives them.
    nodes = {name: _fill_free(n, instances.values()) for name, n in nodes.items()}
    events = []
    for event in doc.get("events") or []:
        problem = event_problem(event, nodes)
        if problem:
            raise ScenarioError(f"{source}: {problem}")
        events.append(dict(event))
    hv = doc.get("default_hypervisor", "kvm")
    cluster = model.Cluster(
        name=doc.get("name", "cluster.sim.test"),
        master=master,
        groups=groups,
        nodes=nodes,
        instances=instances,
        tags=doc.get("tags") or (),
        ipolicy=doc.get("ipolicy") or {},
        default_hypervisor=hv,
        enabled_hypervisors=doc.get("enabled_hypervisors") or [hv],
    )
    return Scenario(
        cluster=cluster,
        events=tuple(events),
        diagnose=diagnose,
        cpu_load=cpu_load,
        mond=mond,
        source=source,
    )


def event_problem(event: Any, nodes: Collection[str]) -> str | None:
    """What is wrong with a scenario event (also ``PUT /sim/events``), or None."""
    if not isinstance(event, Mapping):
        return f"event {event!r} is not an object"
    unknown = set(event) - EVENT_KEYS
    if unknown:
        return f"event {dict(event)!r}: unknown keys {sorted(unknown)} (known: {sorted(EVENT_KEYS)})"
    if "node" in event and event["node"] not in nodes:
        return f"event {dict(event)!r}: unknown node"
    node_keys = {"diagnose", "mond", "offline", "cpu_load"} & set(event)
    if node_keys and "node" not in event:
        return f"event {dict(event)!r}: {sorted(node_keys)} needs a 'node'"
    if "offline" in event and not isinstance(event["offline"], bool):
        return f"event {dict(event)!r}: 'offline' must be true or false"
    if "mond" in event and event["mond"] not in MOND_MODES:
        return f"event {dict(event)!r}: 'mond' must be one of {sorted(MOND_MODES)}"
    at = event.get("at", 0)
    if not isinstance(at, int | float) or isinstance(at, bool) or at < 0:
        return f"event {dict(event)!r}: 'at' must be a number of seconds >= 0"
    return None


def _fill_free(node: model.Node, instances: Any) -> model.Node:
    mem_used = disk_used = 0
    for i in instances:
        local = i.disk_template in model.DRBD_TEMPLATES or i.disk_template in ("plain", "file")
        usage = i.disk + (128 * len(i.disk_sizes) if i.is_drbd else 0)
        if i.primary == node.name:
            mem_used += i.memory if i.admin_state == "up" else 0
            disk_used += usage if local else 0
        elif node.name in i.secondaries:
            disk_used += usage
    mfree = node.mfree or max(0, node.mtotal - node.mnode - mem_used)
    dfree = node.dfree or max(0, node.dtotal - disk_used)
    return attrs.evolve(node, mfree=mfree, dfree=dfree)
