"""Mutable state of the simulated cluster and its RAPI JSON rendering.

:class:`SimCluster` is built from a :class:`maintd.cluster.model.Cluster` (whatever
the scenario loader produced) and is the one object the job executor, the
RAPI front, the mond fronts and the control API share.  Every change goes
through :meth:`SimCluster.changed`, which bumps :attr:`generation`; the RAPI
front pre-encodes its bulk answers per generation, so 20,000 instances are
serialised once per change, not once per request.

Memory and disk follow Ganeti's accounting: a node's free memory is its total
minus the node's own use, minus memory used by something Ganeti does not know
about (fixed at load time), minus the memory of the running instances it is
primary for.  Disk: total minus unknown use minus the disks (``disk_usage``)
of instances with the node as primary or secondary.
"""

from __future__ import annotations

import contextlib
import gc
import random
import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from maintd.cluster import model

#: Ganeti 3.0's default instance policy (from a real cluster's /2/info).
DEFAULT_IPOLICY: dict[str, Any] = {
    "minmax": [
        {
            "min": {
                "memory-size": 128,
                "disk-size": 0,
                "disk-count": 0,
                "cpu-count": 1,
                "nic-count": 0,
                "spindle-use": 0,
            },
            "max": {
                "memory-size": 32768 * 8,
                "disk-size": 1048576 * 4,
                "disk-count": 16,
                "cpu-count": 64,
                "nic-count": 8,
                "spindle-use": 12,
            },
        }
    ],
    "std": {
        "memory-size": 128,
        "disk-size": 1024,
        "disk-count": 1,
        "cpu-count": 1,
        "nic-count": 1,
        "spindle-use": 1,
    },
    "spindle-ratio": 32.0,
    "vcpu-ratio": 4.0,
    "disk-templates": [
        "drbd",
        "plain",
        "file",
        "sharedfile",
        "diskless",
        "rbd",
        "ext",
        "blockdev",
        "gluster",
    ],
}

NDPARAMS_DEFAULT: dict[str, Any] = {
    "oob_program": "",
    "spindle_count": 1,
    "exclusive_storage": False,
    "ovs": False,
    "ovs_name": "switch1",
    "ovs_link": "",
    "ssh_port": 22,
    "cpu_speed": 1,
}

#: DRBD metadata Ganeti adds per disk (MiB) in ``disk_usage``.
DRBD_META_MIB = 128

DEFAULT_DIAGNOSE: dict[str, Any] = {"status": "Ok", "command": "", "details": ""}


class SimError(Exception):
    """A bad scenario or control request, naming the object at fault."""


def new_uuid() -> str:
    return str(uuidlib.uuid4())


@attrs.define
class SimGroup:
    name: str
    uuid: str
    alloc_policy: str = "preferred"
    ipolicy: dict[str, Any] = attrs.field(factory=dict)  # custom part only
    tags: set[str] = attrs.field(factory=set)
    ctime: float = 0.0
    mtime: float = 0.0
    serial_no: int = 1


@attrs.define
class SimNode:
    name: str
    uuid: str
    group: str
    pip: str
    sip: str
    offline: bool = False
    drained: bool = False
    master: bool = False
    master_candidate: bool = False
    master_capable: bool = True
    vm_capable: bool = True
    mtotal: int = 0
    mnode: int = 0
    mem_other: int = 0  # memory used outside Ganeti's knowledge
    dtotal: int = 0
    disk_other: int = 0
    ctotal: int = 1
    cnos: int = 1
    cpu_speed: float = 1.0
    spindles_total: int = 0
    exclusive_storage: bool = False
    tags: set[str] = attrs.field(factory=set)
    ctime: float = 0.0
    mtime: float = 0.0
    serial_no: int = 1
    # simulation-only state
    diagnose: dict[str, Any] = attrs.field(factory=lambda: dict(DEFAULT_DIAGNOSE))
    cpu_load: float | None = None  # node load in CPUs; None = derived from instances

    @property
    def role(self) -> str:
        if self.master:
            return "M"
        if self.offline:
            return "O"
        if self.drained:
            return "D"
        if self.master_candidate:
            return "C"
        return "R"


@attrs.define
class SimInstance:
    name: str
    uuid: str
    primary: str
    secondaries: list[str] = attrs.field(factory=list)
    disk_template: str = "diskless"
    admin_state: str = "up"
    memory: int = 128
    minmem: int = 128
    vcpus: int = 1
    disk_sizes: list[int] = attrs.field(factory=list)
    disk_uuids: list[str] = attrs.field(factory=list)
    spindles: list[int | None] = attrs.field(factory=list)
    spindle_use: int = 1
    auto_balance: bool = True
    always_failover: bool = False
    hypervisor: str = "kvm"
    os: str = "debootstrap+default"
    tags: set[str] = attrs.field(factory=set)
    ctime: float = 0.0
    mtime: float = 0.0
    serial_no: int = 1
    nic_uuid: str = attrs.field(factory=new_uuid)

    @property
    def disk_usage(self) -> int:
        if self.disk_template == "diskless":
            return 0
        total = sum(self.disk_sizes)
        if self.disk_template in model.DRBD_TEMPLATES:
            total += DRBD_META_MIB * len(self.disk_sizes)
        return total

    @property
    def uses_local_disk(self) -> bool:
        """True when the disks take space on the nodes' local storage."""
        return self.disk_template in model.DRBD_TEMPLATES or self.disk_template in (
            "plain",
            "file",
        )


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many acyclic objects.

    Encoding 20,000 instances allocates millions of small objects; with the
    collector on, its generation scans over the big heap triple the cost.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def pip_block(rng: random.Random | None = None) -> tuple[int, int]:
    """A random 127.a.b.0/24 block (a >= 1 so 127.0.0.x is never used)."""
    r = rng or random.SystemRandom()
    return r.randint(1, 250), r.randint(0, 255)


def pip_for(block: tuple[int, int], index: int) -> str:
    """Address of the ``index``-th node (0-based): 254 hosts per /24, then the next /24."""
    a, b = block
    b2 = b + index // 254
    a2 = a + b2 // 256
    return f"127.{a2}.{b2 % 256}.{index % 254 + 1}"


class SimCluster:
    """The simulated cluster's mutable state (single-threaded, reactor only)."""

    def __init__(
        self,
        name: str,
        master: str,
        *,
        uuid: str | None = None,
        tags: Iterable[str] = (),
        ipolicy: dict[str, Any] | None = None,
        default_hypervisor: str = "kvm",
        enabled_hypervisors: Iterable[str] = ("kvm",),
        now: float | None = None,
    ) -> None:
        self.name = name
        self.master = master
        self.uuid = uuid or new_uuid()
        self.tags: set[str] = set(tags)
        self.ipolicy: dict[str, Any] = dict(DEFAULT_IPOLICY)
        self.ipolicy.update(ipolicy or {})
        self.default_hypervisor = default_hypervisor
        self.enabled_hypervisors = list(enabled_hypervisors)
        self.groups: dict[str, SimGroup] = {}
        self.nodes: dict[str, SimNode] = {}
        self.instances: dict[str, SimInstance] = {}
        self.ctime = now if now is not None else time.time()
        self.mtime = self.ctime
        self.serial_no = 1
        #: Bumped by every change; caches key on it.
        self.generation = 0
        self._index_gen = -1
        self._pinst: dict[str, list[str]] = {}
        self._sinst: dict[str, list[str]] = {}
        self._mem_used: dict[str, int] = {}
        self._disk_used: dict[str, int] = {}

    # -- building ---------------------------------------------------------

    @classmethod
    def from_model(
        cls, cluster: model.Cluster, block: tuple[int, int], now: float | None = None
    ) -> SimCluster:
        """Build the simulator state from a snapshot; node pips come from ``block``."""
        with gc_paused():
            return cls._from_model(cluster, block, now)

    @classmethod
    def _from_model(
        cls, cluster: model.Cluster, block: tuple[int, int], now: float | None
    ) -> SimCluster:
        stamp = now if now is not None else time.time()
        sim = cls(
            cluster.name or "cluster.sim.test",
            cluster.master,
            tags=cluster.tags,
            ipolicy=dict(cluster.ipolicy) if cluster.ipolicy else None,
            default_hypervisor=cluster.default_hypervisor or "kvm",
            enabled_hypervisors=cluster.enabled_hypervisors or ("kvm",),
            now=stamp,
        )
        for g in cluster.groups.values():
            sim.groups[g.name] = SimGroup(
                name=g.name,
                uuid=g.uuid or new_uuid(),
                alloc_policy=g.alloc_policy or "preferred",
                ipolicy=dict(g.ipolicy),
                tags=set(g.tags),
                ctime=stamp,
                mtime=stamp,
            )
        for index, n in enumerate(cluster.nodes.values()):
            if n.group not in sim.groups:
                sim.groups[n.group] = SimGroup(
                    name=n.group, uuid=new_uuid(), ctime=stamp, mtime=stamp
                )
            pip = pip_for(block, index)
            sim.nodes[n.name] = SimNode(
                name=n.name,
                uuid=n.uuid or new_uuid(),
                group=n.group,
                pip=pip,
                sip=pip,
                offline=n.offline,
                drained=n.drained,
                master=n.name == cluster.master or n.master,
                master_candidate=n.master_candidate or n.name == cluster.master,
                master_capable=n.master_capable,
                vm_capable=n.vm_capable,
                mtotal=n.mtotal,
                mnode=n.mnode,
                dtotal=n.dtotal,
                ctotal=max(n.ctotal, 1),
                cnos=n.cnos,
                cpu_speed=n.cpu_speed or 1.0,
                spindles_total=n.spindles_total,
                exclusive_storage=n.exclusive_storage,
                tags=set(n.tags),
                ctime=stamp,
                mtime=stamp,
            )
        for i in cluster.instances.values():
            if i.primary not in sim.nodes:
                raise SimError(f"instance {i.name}: primary node {i.primary!r} is not a node")
            for s in i.secondaries:
                if s not in sim.nodes:
                    raise SimError(f"instance {i.name}: secondary node {s!r} is not a node")
            sim.instances[i.name] = SimInstance(
                name=i.name,
                uuid=i.uuid or new_uuid(),
                primary=i.primary,
                secondaries=list(i.secondaries),
                disk_template=i.disk_template,
                admin_state=i.admin_state,
                memory=i.memory,
                minmem=i.minmem or i.memory,
                vcpus=i.vcpus,
                disk_sizes=list(i.disk_sizes),
                disk_uuids=[new_uuid() for _ in i.disk_sizes],
                spindles=list(i.spindles) or [None] * len(i.disk_sizes),
                spindle_use=i.spindle_use,
                auto_balance=i.auto_balance,
                always_failover=i.always_failover,
                hypervisor=i.hypervisor or sim.default_hypervisor,
                os=i.os or "debootstrap+default",
                tags=set(i.tags),
                ctime=stamp,
                mtime=stamp,
            )
        if sim.master not in sim.nodes and sim.nodes:
            first = next(iter(sim.nodes.values()))
            first.master = first.master_candidate = True
            sim.master = first.name
        # Memory/disk used by something Ganeti does not know about: whatever
        # the snapshot's free figures do not explain.
        sim._reindex()
        for n in cluster.nodes.values():
            node = sim.nodes[n.name]
            if n.mfree or n.mtotal:
                node.mem_other = n.mtotal - n.mnode - n.mfree - sim._mem_used[n.name]
            if n.dfree or n.dtotal:
                node.disk_other = n.dtotal - n.dfree - sim._disk_used[n.name]
        return sim

    # -- change tracking ---------------------------------------------------

    def changed(self) -> None:
        self.generation += 1
        self.serial_no += 1

    def _reindex(self) -> None:
        pinst: dict[str, list[str]] = {n: [] for n in self.nodes}
        sinst: dict[str, list[str]] = {n: [] for n in self.nodes}
        mem: dict[str, int] = dict.fromkeys(self.nodes, 0)
        disk: dict[str, int] = dict.fromkeys(self.nodes, 0)
        for inst in self.instances.values():
            pinst[inst.primary].append(inst.name)
            if inst.admin_state == "up":
                mem[inst.primary] += inst.memory
            usage = inst.disk_usage if inst.uses_local_disk else 0
            disk[inst.primary] += usage
            for s in inst.secondaries:
                sinst[s].append(inst.name)
                disk[s] += usage
        for lst in pinst.values():
            lst.sort()
        for lst in sinst.values():
            lst.sort()
        self._pinst, self._sinst, self._mem_used, self._disk_used = pinst, sinst, mem, disk
        self._index_gen = self.generation

    def _ensure_index(self) -> None:
        if self._index_gen != self.generation:
            self._reindex()

    def primaries(self, node: str) -> list[str]:
        self._ensure_index()
        return self._pinst.get(node, [])

    def secondaries(self, node: str) -> list[str]:
        self._ensure_index()
        return self._sinst.get(node, [])

    def mfree(self, node: str) -> int:
        self._ensure_index()
        n = self.nodes[node]
        return n.mtotal - n.mnode - n.mem_other - self._mem_used.get(node, 0)

    def dfree(self, node: str) -> int:
        self._ensure_index()
        n = self.nodes[node]
        return n.dtotal - n.disk_other - self._disk_used.get(node, 0)

    def group_by_uuid(self, uuid: str) -> SimGroup | None:
        for g in self.groups.values():
            if g.uuid == uuid:
                return g
        return None

    def group_ipolicy(self, group: SimGroup) -> dict[str, Any]:
        merged = dict(self.ipolicy)
        merged.update(group.ipolicy)
        return merged

    # -- views ---------------------------------------------------------------

    def to_model(self) -> model.Cluster:
        """An immutable snapshot of the current state."""
        self._ensure_index()
        groups = {
            g.name: model.Group(
                name=g.name,
                uuid=g.uuid,
                alloc_policy=g.alloc_policy,
                ipolicy=self.group_ipolicy(g),
                nodes=[n.name for n in self.nodes.values() if n.group == g.name],
                tags=g.tags,
            )
            for g in self.groups.values()
        }
        nodes = {
            n.name: model.Node(
                name=n.name,
                uuid=n.uuid,
                group=n.group,
                pip=n.pip,
                sip=n.sip,
                offline=n.offline,
                drained=n.drained,
                master=n.master,
                master_candidate=n.master_candidate,
                master_capable=n.master_capable,
                vm_capable=n.vm_capable,
                mtotal=n.mtotal,
                mnode=n.mnode,
                mfree=self.mfree(n.name),
                dtotal=n.dtotal,
                dfree=self.dfree(n.name),
                ctotal=n.ctotal,
                cnos=n.cnos,
                cpu_speed=n.cpu_speed,
                # Ganeti's default spindle_count is 1 (what RAPI's ndparams say).
                spindles_total=max(n.spindles_total, 1),
                spindles_free=n.spindles_total if n.exclusive_storage else 0,
                exclusive_storage=n.exclusive_storage,
                primaries=self._pinst[n.name],
                secondaries=self._sinst[n.name],
                tags=n.tags,
            )
            for n in self.nodes.values()
        }
        instances = {
            i.name: model.Instance(
                name=i.name,
                uuid=i.uuid,
                primary=i.primary,
                secondaries=i.secondaries,
                disk_template=i.disk_template,
                admin_state=i.admin_state,
                oper_state=self.oper_state(i) is True,
                status=self.instance_status(i),
                memory=i.memory,
                minmem=i.minmem,
                vcpus=i.vcpus,
                disk_sizes=i.disk_sizes,
                spindles=i.spindles,
                spindle_use=i.spindle_use,
                auto_balance=i.auto_balance,
                always_failover=i.always_failover,
                hypervisor=i.hypervisor,
                os=i.os,
                tags=i.tags,
            )
            for i in self.instances.values()
        }
        return model.Cluster(
            name=self.name,
            master=self.master,
            groups=groups,
            nodes=nodes,
            instances=instances,
            tags=self.tags,
            ipolicy=self.ipolicy,
            default_hypervisor=self.default_hypervisor,
            enabled_hypervisors=self.enabled_hypervisors,
        )

    def oper_state(self, inst: SimInstance) -> bool | None:
        """Live state as Ganeti reports it: None when the primary is offline."""
        if self.nodes[inst.primary].offline:
            return None
        return inst.admin_state == "up"

    def instance_status(self, inst: SimInstance) -> str:
        if self.nodes[inst.primary].offline:
            return "ERROR_nodeoffline"
        if inst.admin_state == "up":
            return "running"
        if inst.admin_state == "offline":
            return "ADMIN_offline"
        return "ADMIN_down"

    # -- RAPI JSON -------------------------------------------------------------

    def node_json(self, n: SimNode) -> dict[str, Any]:
        live = not n.offline
        ndparams = dict(NDPARAMS_DEFAULT)
        ndparams["exclusive_storage"] = n.exclusive_storage
        ndparams["cpu_speed"] = n.cpu_speed
        ndparams["spindle_count"] = max(n.spindles_total, 1)
        pinst = self.primaries(n.name)
        sinst = self.secondaries(n.name)
        group = self.groups[n.group]
        return {
            "name": n.name,
            "offline": n.offline,
            "master_candidate": n.master_candidate,
            "drained": n.drained,
            "dtotal": n.dtotal if live else None,
            "dfree": self.dfree(n.name) if live else None,
            "sptotal": (n.spindles_total if n.exclusive_storage else None) if live else None,
            "spfree": (n.spindles_total if n.exclusive_storage else None) if live else None,
            "mtotal": n.mtotal if live else None,
            "mnode": n.mnode if live else None,
            "mfree": self.mfree(n.name) if live else None,
            "pinst_cnt": len(pinst),
            "sinst_cnt": len(sinst),
            "ctotal": n.ctotal if live else None,
            "cnos": n.cnos if live else None,
            "cnodes": 1 if live else None,
            "csockets": 1 if live else None,
            "pip": n.pip,
            "sip": n.sip,
            "role": n.role,
            "pinst_list": list(pinst),
            "sinst_list": list(sinst),
            "master_capable": n.master_capable,
            "vm_capable": n.vm_capable,
            "ndparams": ndparams,
            "group.uuid": group.uuid,
            "ctime": n.ctime,
            "mtime": n.mtime,
            "uuid": n.uuid,
            "serial_no": n.serial_no,
            "tags": sorted(n.tags),
        }

    def instance_json(self, i: SimInstance) -> dict[str, Any]:
        oper = self.oper_state(i)
        running = oper is True
        return {
            "name": i.name,
            "admin_state": i.admin_state,
            "os": i.os,
            "pnode": i.primary,
            "snodes": list(i.secondaries),
            "disk_template": i.disk_template,
            "nic.ips": [None],
            "nic.macs": ["aa:00:00:00:00:00"],
            "nic.modes": ["bridged"],
            "nic.uuids": [i.nic_uuid],
            "nic.names": [None],
            "nic.links": ["br0"],
            "nic.networks": [None],
            "nic.networks.names": [None],
            "nic.bridges": ["br0"],
            "network_port": None,
            "disk.sizes": list(i.disk_sizes),
            "disk.spindles": list(i.spindles),
            "disk_usage": i.disk_usage,
            "disk.uuids": list(i.disk_uuids),
            "disk.names": [None] * len(i.disk_sizes),
            "beparams": {
                "minmem": i.minmem,
                "maxmem": i.memory,
                "vcpus": i.vcpus,
                "auto_balance": i.auto_balance,
                "always_failover": i.always_failover,
                "spindle_use": i.spindle_use,
                "memory": i.memory,
            },
            "hvparams": {},
            "oper_state": oper,
            "oper_ram": i.memory if running else None,
            "oper_vcpus": i.vcpus if running else None,
            "status": self.instance_status(i),
            "custom_hvparams": {},
            "custom_beparams": {"minmem": i.minmem, "maxmem": i.memory, "vcpus": i.vcpus},
            "custom_nicparams": [{"mode": "bridged", "link": "br0"}],
            "ctime": i.ctime,
            "mtime": i.mtime,
            "uuid": i.uuid,
            "serial_no": i.serial_no,
            "tags": sorted(i.tags),
        }

    def group_json(self, g: SimGroup) -> dict[str, Any]:
        members = sorted(n.name for n in self.nodes.values() if n.group == g.name)
        return {
            "alloc_policy": g.alloc_policy,
            "name": g.name,
            "node_cnt": len(members),
            "node_list": members,
            "ipolicy": self.group_ipolicy(g),
            "custom_ipolicy": dict(g.ipolicy),
            "diskparams": {},
            "custom_diskparams": {},
            "ndparams": dict(NDPARAMS_DEFAULT),
            "custom_ndparams": {},
            "ctime": g.ctime,
            "mtime": g.mtime,
            "uuid": g.uuid,
            "serial_no": g.serial_no,
            "tags": sorted(g.tags),
        }

    def info_json(self) -> dict[str, Any]:
        hvs = self.enabled_hypervisors or [self.default_hypervisor]
        return {
            "software_version": "3.0.2",
            "protocol_version": 3000000,
            "config_version": 3000000,
            "os_api_version": 20,
            "export_version": 0,
            "vcs_version": "(ganeti) version 3.0.2-sim",
            "architecture": ["64bits", "x86_64"],
            "name": self.name,
            "master": self.master,
            "default_hypervisor": self.default_hypervisor,
            "enabled_hypervisors": list(hvs),
            "hvparams": {hv: {} for hv in hvs},
            "os_hvp": {},
            "beparams": {
                "default": {
                    "minmem": 128,
                    "maxmem": 128,
                    "vcpus": 1,
                    "auto_balance": True,
                    "always_failover": False,
                    "spindle_use": 1,
                }
            },
            "osparams": {},
            "ipolicy": dict(self.ipolicy),
            "nicparams": {"default": {"mode": "bridged", "link": "br0", "vlan": ""}},
            "ndparams": dict(NDPARAMS_DEFAULT),
            "diskparams": {},
            "candidate_pool_size": 10,
            "max_running_jobs": 20,
            "max_tracked_jobs": 25,
            "mac_prefix": "aa:00:00",
            "master_netdev": "lo",
            "master_netmask": 32,
            "use_external_mip_script": False,
            "volume_group_name": "xenvg",
            "drbd_usermode_helper": "/bin/true",
            "file_storage_dir": "/srv/ganeti/file-storage",
            "shared_file_storage_dir": "/srv/ganeti/shared-file-storage",
            "gluster_storage_dir": "/var/run/ganeti/gluster",
            "maintain_node_health": False,
            "ctime": self.ctime,
            "mtime": self.mtime,
            "uuid": self.uuid,
            "tags": sorted(self.tags),
            "uid_pool": [],
            "default_iallocator": "hail",
            "default_iallocator_params": {},
            "reserved_lvs": [],
            "primary_ip_version": 4,
            "prealloc_wipe_disks": False,
            "hidden_os": [],
            "blacklisted_os": [],
            "enabled_disk_templates": sorted(
                {i.disk_template for i in self.instances.values()} or {"drbd"}
            ),
            "install_image": "",
            "instance_communication_network": "",
            "zeroing_image": "",
            "compression_tools": ["gzip", "gzip-fast", "gzip-slow"],
            "enabled_user_shutdown": False,
            "enabled_data_collectors": {
                "cpu-avg-load": True,
                "diskstats": True,
                "drbd": True,
                "inst-status-xen": True,
                "lv": True,
                "xen-cpu-avg-load": True,
            },
            "data_collector_interval": {
                "cpu-avg-load": 5000000,
                "diskstats": 5000000,
                "drbd": 5000000,
                "inst-status-xen": 5000000,
                "lv": 5000000,
                "xen-cpu-avg-load": 5000000,
            },
            "modify_ssh_setup": False,
            "ssh_key_type": "rsa",
            "ssh_key_bits": 2048,
            "vg_name": "xenvg",
            "drbd_helper": "/bin/true",
        }

    def state_json(self) -> dict[str, Any]:
        """Compact view for ``GET /sim/state``."""
        self._ensure_index()
        return {
            "generation": self.generation,
            "cluster": self.name,
            "master": self.master,
            "tags": sorted(self.tags),
            "groups": {g.name: {"tags": sorted(g.tags)} for g in self.groups.values()},
            "nodes": {
                n.name: {
                    "pip": n.pip,
                    "group": n.group,
                    "role": n.role,
                    "offline": n.offline,
                    "drained": n.drained,
                    "mfree": self.mfree(n.name),
                    "dfree": self.dfree(n.name),
                    "primaries": self._pinst[n.name],
                    "secondaries": self._sinst[n.name],
                    "tags": sorted(n.tags),
                    "diagnose": n.diagnose,
                }
                for n in self.nodes.values()
            },
            "instances": {
                i.name: {
                    "primary": i.primary,
                    "secondaries": i.secondaries,
                    "disk_template": i.disk_template,
                    "admin_state": i.admin_state,
                    "status": self.instance_status(i),
                    "os": i.os,
                    "tags": sorted(i.tags),
                }
                for i in self.instances.values()
            },
        }
