"""hbal's text data format (``hbal -t FILE`` / ``hbal -S FILE``) <-> :class:`Cluster`.

The format (Ganeti's ``src/Ganeti/HTools/Backend/Text.hs``) has sections
separated by empty lines:

1. groups: ``name|uuid|alloc_policy|tags|networks``
2. nodes: ``name|mtotal|mnode|mfree|dtotal|dfree|ctotal|flag|group_uuid|spindles|
   tags|excl_storage|free_spindles|nos_cpu|cpu_speed`` (flag ``Y`` offline,
   ``M`` master, ``N`` other; trailing fields optional; ``?`` in a figure
   marks a node without data, loaded as offline)
3. instances: ``name|mem|disk|vcpus|status|auto_balance|pnode|snode|template|
   tags|spindle_use|spindles|forthcoming``
4. cluster tags, one a line
5. instance policies: ``owner|std|min,max;min,max…|templates|vcpu_ratio|
   spindle_ratio`` (empty owner = the cluster policy, else a group name)

Policies are kept in the RAPI shape (``minmax``, ``std``, ``disk-templates``,
``vcpu-ratio``, ``spindle-ratio``) so the RAPI loader and this module agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from maintd.cluster.model import Cluster, Group, Instance, Node

ISPEC_KEYS = ("memory-size", "cpu-count", "disk-size", "disk-count", "nic-count", "spindle-use")

INSTANCE_STATUSES = frozenset(
    {
        "ADMIN_down",
        "ADMIN_offline",
        "ERROR_down",
        "ERROR_up",
        "ERROR_nodedown",
        "ERROR_nodeoffline",
        "running",
        "USER_down",
        "ERROR_wrongnode",
    }
)
DISK_TEMPLATES = (
    "blockdev",
    "diskless",
    "drbd",
    "ext",
    "file",
    "gluster",
    "plain",
    "rbd",
    "sharedfile",
)
ALLOC_POLICIES = frozenset({"preferred", "last_resort", "unallocable"})

#: Ganeti's built-in instance policy (``defIPolicy``), used where none is given.
DEFAULT_IPOLICY: dict[str, Any] = {
    "minmax": [
        {
            "min": {
                "memory-size": 128,
                "cpu-count": 1,
                "disk-size": 1024,
                "disk-count": 1,
                "nic-count": 1,
                "spindle-use": 1,
            },
            "max": {
                "memory-size": 32768,
                "cpu-count": 8,
                "disk-size": 1024 * 1024,
                "disk-count": 16,
                "nic-count": 8,
                "spindle-use": 12,
            },
        }
    ],
    "std": {
        "memory-size": 128,
        "cpu-count": 1,
        "disk-size": 1024,
        "disk-count": 1,
        "nic-count": 1,
        "spindle-use": 1,
    },
    "disk-templates": list(DISK_TEMPLATES),
    "vcpu-ratio": 4.0,
    "spindle-ratio": 32.0,
}


class TextFormatError(ValueError):
    """The text data is not in hbal's format; the message names the line/object."""


def _split_list(text: str) -> list[str]:
    return [t for t in text.split(",") if t] if text else []


def _int(owner: str, what: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise TextFormatError(f"{owner}: invalid {what} {text!r}") from None


def _num(owner: str, what: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TextFormatError(f"{owner}: invalid {what} {text!r}") from None


def _yes_no(owner: str, what: str, text: str) -> bool:
    if text == "Y":
        return True
    if text == "N":
        return False
    raise TextFormatError(f"{owner}: invalid {what} value {text!r} (Y or N)")


def _sections(text: str) -> list[list[str]]:
    sections: list[list[str]] = [[]]
    for line in text.splitlines():
        if line == "":
            sections.append([])
        else:
            sections[-1].append(line)
    return sections


def _parse_ispec(owner: str, text: str) -> dict[str, int]:
    parts = text.split(",")
    if len(parts) < 6:
        raise TextFormatError(f"invalid ispec data for {owner}: {text!r}")
    return {k: _int(owner, k, v) for k, v in zip(ISPEC_KEYS, parts, strict=False)}


def _parse_ipolicy(line: str) -> tuple[str, dict[str, Any]]:
    fields = line.split("|")
    if len(fields) < 6:
        raise TextFormatError(f"invalid ipolicy data: {line!r}")
    owner, std, minmax, dts, vcpu, spindle = fields[:6]
    label = owner or "cluster"
    specs = minmax.split(";") if minmax else []
    if len(specs) % 2:
        raise TextFormatError(f"odd number of min/max specs for {label}")
    pairs = [
        {
            "min": _parse_ispec(f"{label}/minspec", specs[i]),
            "max": _parse_ispec(f"{label}/maxspec", specs[i + 1]),
        }
        for i in range(0, len(specs), 2)
    ]
    templates = _split_list(dts)
    for dt in templates:
        if dt not in DISK_TEMPLATES:
            raise TextFormatError(f"{label}: unknown disk template {dt!r}")
    return owner, {
        "minmax": pairs,
        "std": _parse_ispec(f"{label}/stdspec", std),
        "disk-templates": templates,
        "vcpu-ratio": _num(label, "vcpu_ratio", vcpu),
        "spindle-ratio": _num(label, "spindle_ratio", spindle),
    }


_NODE_DEFAULTS = ["1", "", "N", "0", "1", "1.0"]  # fields 10..15


def _parse_node(line: str, groups_by_uuid: Mapping[str, str]) -> Node:
    fields = line.split("|")
    if len(fields) < 9:
        raise TextFormatError(f"invalid/incomplete node data: {line!r}")
    if len(fields) < 15:
        fields = fields + _NODE_DEFAULTS[len(fields) - 9 :]
    name, tm, nm, fm, td, fd, tc, flag, guuid = fields[:9]
    spindles, tags, excl, free_sp, nos_cpu, speed = fields[9:15]
    group = groups_by_uuid.get(guuid)
    if group is None:
        raise TextFormatError(f"unknown group {guuid!r} for node {name}")
    owner = f"node {name}"
    if "?" in (tm, nm, fm, td, fd, tc):
        return Node(name=name, uuid=name, group=group, offline=True)
    return Node(
        name=name,
        uuid=name,
        group=group,
        offline=flag == "Y",
        master=flag == "M",
        mtotal=int(_num(owner, "total memory", tm)),
        mnode=_int(owner, "node memory", nm),
        mfree=_int(owner, "free memory", fm),
        dtotal=int(_num(owner, "total disk", td)),
        dfree=_int(owner, "free disk", fd),
        ctotal=int(_num(owner, "total cpus", tc)),
        cnos=_int(owner, "node cpus", nos_cpu),
        cpu_speed=_num(owner, "cpu speed", speed),
        spindles_total=_int(owner, "spindles", spindles),
        spindles_free=_int(owner, "free spindles", free_sp),
        exclusive_storage=_yes_no(owner, "exclusive_storage", excl),
        tags=_split_list(tags),
    )


def _parse_instance(line: str, nodes: Mapping[str, Node]) -> Instance:
    fields = line.split("|")
    if len(fields) == 10:
        fields.append("1")
    if len(fields) == 11:
        fields.append("-")
    if len(fields) == 12:
        fields.append("N")
    if len(fields) < 13:
        raise TextFormatError(f"invalid/incomplete instance data: {line!r}")
    name, mem, dsk, vcpus, status, auto_bal, pnode, snode, dt, tags, su, spindles, forth = fields[
        :13
    ]
    owner = f"instance {name}"
    if pnode not in nodes:
        raise TextFormatError(f"unknown node {pnode!r} for instance {name}")
    if snode and snode not in nodes:
        raise TextFormatError(f"unknown node {snode!r} for instance {name}")
    if status not in INSTANCE_STATUSES:
        raise TextFormatError(f"{owner}: invalid instance status {status!r}")
    if dt not in DISK_TEMPLATES:
        raise TextFormatError(f"{owner}: unknown disk template {dt!r}")
    if dt == "drbd" and snode == pnode:
        raise TextFormatError(f"instance {name} has same primary and secondary node - {pnode}")
    admin = {"ADMIN_down": "down", "USER_down": "down", "ADMIN_offline": "offline"}.get(
        status, "up"
    )
    return Instance(
        name=name,
        uuid=name,
        primary=pnode,
        secondaries=(snode,) if snode else (),
        disk_template=dt,
        admin_state=admin,
        oper_state=status in ("running", "ERROR_up"),
        status=status,
        memory=_int(owner, "memory", mem),
        minmem=_int(owner, "memory", mem),
        vcpus=_int(owner, "vcpus", vcpus),
        disk_sizes=(_int(owner, "disk", dsk),),
        spindles=(None if spindles == "-" else _int(owner, "spindles", spindles),),
        spindle_use=_int(owner, "spindle_use", su),
        auto_balance=_yes_no(owner, "auto_balance", auto_bal),
        tags=_split_list(tags),
        forthcoming=_yes_no(owner, "forthcoming", forth),
    )


def parse_text(text: str) -> Cluster:
    """Parse hbal's text data into a :class:`Cluster`.

    Raises :class:`TextFormatError` (a ``ValueError``) naming the bad line.
    """
    sections = _sections(text)
    if len(sections) < 4:
        raise TextFormatError(
            f"invalid format of the input file: {len(sections)} sections instead of 4 or more"
        )
    glines, nlines, ilines, ctags = sections[:4]
    pollines = sections[4] if len(sections) > 4 else []
    groups: dict[str, Group] = {}
    by_uuid: dict[str, str] = {}
    for line in glines:
        f = line.split("|")
        if len(f) < 4:
            raise TextFormatError(f"invalid/incomplete group data: {line!r}")
        name, uuid, apol, tags = f[:4]
        nets = f[4] if len(f) > 4 else ""
        if apol not in ALLOC_POLICIES:
            raise TextFormatError(f"group {name}: invalid alloc policy {apol!r}")
        groups[name] = Group(
            name=name,
            uuid=uuid,
            alloc_policy=apol,
            tags=_split_list(tags),
            networks=_split_list(nets),
        )
        by_uuid[uuid] = name
    nodes: dict[str, Node] = {}
    for line in nlines:
        node = _parse_node(line, by_uuid)
        nodes[node.name] = node
    instances: dict[str, Instance] = {}
    for line in ilines:
        inst = _parse_instance(line, nodes)
        instances[inst.name] = inst
    prim: dict[str, list[str]] = {n: [] for n in nodes}
    sec: dict[str, list[str]] = {n: [] for n in nodes}
    for inst in instances.values():
        prim[inst.primary].append(inst.name)
        for s in inst.secondaries:
            sec[s].append(inst.name)
    members: dict[str, list[str]] = {g: [] for g in groups}
    for node in nodes.values():
        members[node.group].append(node.name)
    nodes = {
        n: _evolve(node, primaries=tuple(prim[n]), secondaries=tuple(sec[n]))
        for n, node in nodes.items()
    }
    cluster_policy: dict[str, Any] = DEFAULT_IPOLICY
    for line in pollines:
        owner, pol = _parse_ipolicy(line)
        if owner == "":
            cluster_policy = pol
        elif owner in groups:
            groups[owner] = _evolve(groups[owner], ipolicy=pol)
        else:
            raise TextFormatError(f"ipolicy for unknown group {owner!r}")
    groups = {g: _evolve(grp, nodes=tuple(members[g])) for g, grp in groups.items()}
    master = next((n.name for n in nodes.values() if n.master), "")
    return Cluster(
        name="",
        master=master,
        groups=groups,
        nodes=nodes,
        instances=instances,
        tags=frozenset(ctags),
        ipolicy=cluster_policy,
    )


def _evolve(obj: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(obj, **changes)


def _fmt_ispec(spec: Mapping[str, Any]) -> str:
    return ",".join(str(int(spec.get(k, 0))) for k in ISPEC_KEYS)


def _fmt_ratio(value: Any) -> str:
    # Haskell's ``show`` of a Double: always with a decimal point.
    return repr(float(value))


def format_ipolicy(owner: str, pol: Mapping[str, Any]) -> str:
    """One ipolicy line (``owner`` empty for the cluster policy)."""
    full = {**DEFAULT_IPOLICY, **pol}
    minmax = ";".join(f"{_fmt_ispec(mm['min'])};{_fmt_ispec(mm['max'])}" for mm in full["minmax"])
    return "|".join(
        [
            owner,
            _fmt_ispec(full["std"]),
            minmax,
            ",".join(full["disk-templates"]),
            _fmt_ratio(full["vcpu-ratio"]),
            _fmt_ratio(full["spindle-ratio"]),
        ]
    )


def _spindles_field(inst: Instance) -> str:
    if any(s is None for s in inst.spindles):
        return "-"
    return str(sum(s for s in inst.spindles if s is not None))


def format_text(cluster: Cluster) -> str:
    """The cluster as hbal text data (what ``hbal -S`` writes; ``hbal -t`` reads it).

    Drained nodes are written as offline, as htools treats them.
    """
    glines = [
        f"{g.name}|{g.uuid}|{g.alloc_policy}|{','.join(sorted(g.tags))}|{','.join(g.networks)}"
        for g in cluster.groups.values()
    ]
    nlines = []
    for n in cluster.nodes.values():
        grp = cluster.groups.get(n.group)
        guuid = grp.uuid if grp else n.group
        flag = "Y" if (n.offline or n.drained) else ("M" if n.master else "N")
        nlines.append(
            f"{n.name}|{n.mtotal}|{n.mnode}|{n.mfree}|{n.dtotal}|{n.dfree}|{n.ctotal}|{flag}|"
            f"{guuid}|{n.spindles_total}|{','.join(sorted(n.tags))}|"
            f"{'Y' if n.exclusive_storage else 'N'}|{n.spindles_free}|{n.cnos}|{float(n.cpu_speed)!r}"
        )
    ilines = []
    for i in cluster.instances.values():
        status = i.status if i.status in INSTANCE_STATUSES else _status_from_admin(i)
        ilines.append(
            f"{i.name}|{i.memory}|{i.disk}|{i.vcpus}|{status}|{'Y' if i.auto_balance else 'N'}|"
            f"{i.primary}|{i.secondary or ''}|{i.disk_template}|{','.join(sorted(i.tags))}|"
            f"{i.spindle_use}|{_spindles_field(i)}|{'Y' if i.forthcoming else 'N'}"
        )
    plines = [format_ipolicy("", cluster.ipolicy or DEFAULT_IPOLICY)]
    plines += [format_ipolicy(g.name, g.ipolicy) for g in cluster.groups.values() if g.ipolicy]
    parts = [glines, nlines, ilines, sorted(cluster.tags), plines]
    return "\n".join("".join(line + "\n" for line in part) for part in parts)


def _status_from_admin(inst: Instance) -> str:
    if inst.admin_state == "offline":
        return "ADMIN_offline"
    if inst.admin_state == "down":
        return "ADMIN_down"
    return "running" if inst.oper_state else "ERROR_down"
