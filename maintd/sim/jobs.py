"""Ganeti-like jobs of the simulated cluster.

A job is submitted as one opcode dict (what rlib2 builds from the request),
goes queued -> running -> success/error on the simulator's clock, and changes
the :class:`~maintd.sim.cluster.SimCluster` only when it succeeds: every
operation checks all its prerequisites before it touches anything, so a failed
job leaves the cluster as it was.  Messages and error classes are Ganeti's
(``OpPrereqError`` with an error code, ``OpExecError``, ``TagError``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from maintd.cluster import model
from maintd.sim.cluster import SimCluster, SimInstance, SimNode

log = Logger()

FINAL = frozenset({"success", "error", "canceled"})
TAG_RE = re.compile(r"^[\w.+*/:@-]+$")
MAX_TAG_LEN = 128
DEFAULT_IALLOCATOR = "hail"


class OpFailure(Exception):
    """An opcode failed; ``kind`` is Ganeti's exception class name."""

    def __init__(self, kind: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code

    def opresult(self) -> list[Any]:
        if self.code is None:
            return [self.kind, [self.message]]
        return [self.kind, [self.message, self.code]]


def prereq(message: str, code: str = "wrong_state") -> OpFailure:
    return OpFailure("OpPrereqError", message, code)


def _no_good_node(ialloc: Any) -> OpFailure:
    """Ganeti's answer when the iallocator finds no node (real cluster sample)."""
    return prereq(
        f"Can't compute nodes using iallocator '{ialloc}': Request failed:"
        " Can't find any good node: ",
        "insufficient_resources",
    )


def _ts(seconds: float) -> list[int]:
    whole = int(seconds)
    return [whole, int(round((seconds - whole) * 1_000_000))]


@attrs.define
class Job:
    id: int
    ops: list[dict[str, Any]]
    summary: list[str]
    status: str = "queued"
    opstatus: list[str] = attrs.field(factory=list)
    received_ts: list[int] | None = None
    start_ts: list[int] | None = None
    end_ts: list[int] | None = None
    oplog: list[list[Any]] = attrs.field(factory=list)
    opresult: list[Any] = attrs.field(factory=list)
    log_serial: int = 0

    def field(self, name: str) -> Any:
        return getattr(self, name)

    def to_json(self, bulk: bool = False) -> dict[str, Any]:
        out = {
            "id": self.id,
            "ops": self.ops,
            "status": self.status,
            "summary": self.summary,
            "opstatus": self.opstatus,
            "received_ts": self.received_ts,
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
        }
        if not bulk:
            out["oplog"] = self.oplog
            out["opresult"] = self.opresult
        return out


def lost_job_json(job_id: Any) -> dict[str, Any]:
    """What Ganeti 3.0 answers for a job id it does not know: every field null."""
    return {
        "id": job_id,
        "ops": None,
        "status": None,
        "summary": None,
        "opstatus": None,
        "received_ts": None,
        "start_ts": None,
        "end_ts": None,
        "oplog": None,
        "opresult": None,
    }


def _summary(op: dict[str, Any]) -> str:
    name = op["OP_ID"][3:]
    for key in ("instance_name", "node_name"):
        if key in op:
            return f"{name}({op[key]})"
    return name


class JobQueue:
    """Runs jobs on ``clock``; each takes ``job_seconds`` of simulated time."""

    def __init__(
        self,
        cluster: SimCluster,
        clock: Any,
        *,
        job_seconds: float = 2.0,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self.clock = clock
        self.job_seconds = job_seconds
        self.wallclock = wallclock
        self.jobs: dict[int, Job] = {}
        self.next_id = 1
        #: Fault injection: the next N jobs to execute fail.
        self.fail_next = 0
        self._waiters: dict[int, list[Deferred[None]]] = {}
        self._calls: list[Any] = []
        self.on_change: list[Callable[[], None]] = []
        self._op_index = 0

    # -- submission --------------------------------------------------------

    def submit(self, ops: dict[str, Any] | list[dict[str, Any]]) -> int:
        """Queue a job of one or more opcodes; returns its id."""
        op_list = [ops] if isinstance(ops, dict) else list(ops)
        job_id = self.next_id
        self.next_id += 1
        now = self.wallclock()
        stamped = []
        for index, op in enumerate(op_list):
            op = dict(op)
            op_name = op["OP_ID"][3:].lower()
            op["reason"] = list(op.get("reason", [])) + [
                [f"gnt:opcode:{op_name}", f"job={job_id};index={index}", int(now * 1e9)]
            ]
            stamped.append(op)
        job = Job(
            id=job_id,
            ops=stamped,
            summary=[_summary(op) for op in stamped],
            opstatus=["queued"] * len(stamped),
            received_ts=_ts(now),
            oplog=[[] for _ in stamped],
            opresult=[None] * len(stamped),
        )
        self.jobs[job_id] = job
        log.debug("sim job {id} queued: {summary}", id=job_id, summary=job.summary)
        self._calls.append(self.clock.callLater(0, self._start, job))
        return job_id

    def _start(self, job: Job) -> None:
        if job.status != "queued":
            return
        job.status = "running"
        job.opstatus = ["running"] + job.opstatus[1:]
        job.start_ts = _ts(self.wallclock())
        self._notify(job)
        self._calls.append(self.clock.callLater(self.job_seconds, self._finish, job))

    def _finish(self, job: Job) -> None:
        failed: OpFailure | None = None
        for index, op in enumerate(job.ops):
            if failed is not None:
                job.opstatus[index] = "error"
                job.opresult[index] = ["OpExecError", ["Previous opcode failed"]]
                continue
            try:
                if self.fail_next > 0:
                    self.fail_next -= 1
                    raise OpFailure("OpExecError", "Simulated failure (fault injection)")
                result = self.execute(job, op, index)
            except OpFailure as err:
                failed = err
                job.opstatus[index] = "error"
                job.opresult[index] = err.opresult()
                log.info(
                    "sim job {id} failed: {summary}: {msg}",
                    id=job.id,
                    summary=job.summary[index],
                    msg=err.message,
                )
            else:
                job.opstatus[index] = "success"
                job.opresult[index] = result
        job.status = "error" if failed is not None else "success"
        job.end_ts = _ts(self.wallclock())
        self._notify(job)

    def _notify(self, job: Job) -> None:
        for d in self._waiters.pop(job.id, []):
            d.callback(None)
        for fn in self.on_change:
            fn()

    def changed(self, job_id: int) -> Deferred[None]:
        """Fires at the job's next status change."""
        d: Deferred[None] = Deferred()
        self._waiters.setdefault(job_id, []).append(d)
        return d

    def stop(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []

    def _log(self, job: Job, message: str) -> None:
        job.log_serial += 1
        job.oplog[self._op_index].append(
            [job.log_serial, _ts(self.wallclock()), "message", message]
        )

    # -- execution -----------------------------------------------------------

    def execute(self, job: Job, op: dict[str, Any], index: int = 0) -> Any:
        self._op_index = index
        handler = getattr(self, "_op_" + op["OP_ID"][3:].lower(), None)
        if handler is None:
            raise OpFailure("OpExecError", f"Opcode {op['OP_ID']} is not simulated")
        self._fill_defaults(op)
        dry_run = bool(op.get("dry_run"))
        apply = handler(job, op)
        if dry_run or apply is None:
            return None
        result = apply()
        self.cluster.changed()
        return result

    def _fill_defaults(self, op: dict[str, Any]) -> None:
        """What Ganeti adds to a submitted opcode: object uuids, the default iallocator."""
        inst = self.cluster.instances.get(op.get("instance_name") or "")
        if inst is not None:
            op.setdefault("instance_uuid", inst.uuid)
        node = self.cluster.nodes.get(op.get("node_name") or "")
        if node is not None:
            op.setdefault("node_uuid", node.uuid)
        op_id = op["OP_ID"]
        no_target = not op.get("iallocator") and not op.get("target_node")
        if op_id in ("OP_INSTANCE_MIGRATE", "OP_INSTANCE_FAILOVER") and no_target:
            # Only externally mirrored templates get the default iallocator.
            movable = model.SHARED_TEMPLATES | model.DISKLESS_TEMPLATES
            if inst is not None and inst.disk_template in movable:
                op["iallocator"] = DEFAULT_IALLOCATOR
        elif op_id == "OP_INSTANCE_REPLACE_DISKS" or op_id == "OP_NODE_EVACUATE":
            wants_node = op_id == "OP_NODE_EVACUATE" or op.get("mode") == "replace_new_secondary"
            if wants_node and not op.get("iallocator") and not op.get("remote_node"):
                op["iallocator"] = DEFAULT_IALLOCATOR

    # lookups ------------------------------------------------------------------

    def _node(self, name: Any) -> SimNode:
        node = self.cluster.nodes.get(name) if isinstance(name, str) else None
        if node is None:
            raise prereq(f"Node '{name}' not known", "unknown_entity")
        return node

    def _instance(self, name: Any) -> SimInstance:
        inst = self.cluster.instances.get(name) if isinstance(name, str) else None
        if inst is None:
            raise prereq(f"Instance '{name}' not known", "unknown_entity")
        return inst

    def _check_target(self, node: SimNode) -> None:
        if node.offline:
            raise prereq(f"Can't use offline node {node.name}", "wrong_state")
        if node.drained:
            raise prereq(f"Can't use drained node {node.name}", "wrong_state")
        if not node.vm_capable:
            raise prereq(f"Can't use non-vm_capable node {node.name}", "wrong_state")

    def _check_memory(self, node: SimNode, inst: SimInstance) -> None:
        free = self.cluster.mfree(node.name)
        if free < inst.memory:
            raise prereq(
                f"Not enough memory on node {node.name} for starting instance {inst.name}:"
                f" needed {inst.memory} MiB, available {free} MiB",
                "insufficient_resources",
            )

    def _check_disk(self, node: SimNode, inst: SimInstance) -> None:
        free = self.cluster.dfree(node.name)
        need = inst.disk_usage
        if free < need:
            raise prereq(
                f"Not enough disk space on target node {node.name} vg xenvg:"
                f" required {need} MiB, available {free} MiB",
                "insufficient_resources",
            )

    def allocate(
        self, inst: SimInstance, *, exclude: set[str], need_memory: bool, need_disk: bool
    ) -> SimNode | None:
        """A simple hail: the usable node of the primary's group with most free memory."""
        group = self.cluster.nodes[inst.primary].group
        best: SimNode | None = None
        best_free = -(2**62)
        for node in self.cluster.nodes.values():
            if node.name in exclude or node.group != group:
                continue
            if node.offline or node.drained or not node.vm_capable:
                continue
            mfree = self.cluster.mfree(node.name)
            if need_memory and mfree < inst.memory:
                continue
            if need_disk and self.cluster.dfree(node.name) < inst.disk_usage:
                continue
            if mfree > best_free:
                best, best_free = node, mfree
        return best

    def _touch(self, *objs: Any) -> None:
        now = self.wallclock()
        for obj in objs:
            obj.mtime = now
            obj.serial_no += 1

    # tags -----------------------------------------------------------------------

    def _tag_target(self, op: dict[str, Any]) -> Any:
        kind, name = op.get("kind"), op.get("name")
        if kind == "cluster":
            return self.cluster
        if kind == "node":
            return self._node(name)
        if kind == "instance":
            return self._instance(name)
        if kind == "nodegroup":
            group = self.cluster.groups.get(name) if isinstance(name, str) else None
            if group is None:
                raise prereq(f"Group '{name}' not known", "unknown_entity")
            return group
        raise prereq(f"Unsupported tag type '{kind}'", "invalid")

    @staticmethod
    def _validate_tags(tags: Any) -> list[str]:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise prereq("Invalid tag list", "invalid")
        for tag in tags:
            if len(tag) > MAX_TAG_LEN:
                raise OpFailure("TagError", f"Tag too long (>{MAX_TAG_LEN} characters)")
            if not tag:
                raise OpFailure("TagError", "Tags cannot be empty")
            if not TAG_RE.match(tag):
                raise OpFailure("TagError", "Tag contains invalid characters")
        return tags

    def _op_tags_set(self, job: Job, op: dict[str, Any]) -> Callable[[], Any]:
        target = self._tag_target(op)
        tags = self._validate_tags(op.get("tags", []))

        def apply() -> None:
            target.tags.update(tags)
            if target is not self.cluster:
                self._touch(target)

        return apply

    def _op_tags_del(self, job: Job, op: dict[str, Any]) -> Callable[[], Any]:
        target = self._tag_target(op)
        tags = self._validate_tags(op.get("tags", []))
        missing = sorted(set(tags) - target.tags)
        if missing:
            names = ", ".join(f"'{t}'" for t in missing)
            raise prereq(f"Tag(s) {names} not found", "unknown_entity")

        def apply() -> None:
            target.tags.difference_update(tags)
            if target is not self.cluster:
                self._touch(target)

        return apply

    # nodes --------------------------------------------------------------------------

    def _op_node_set_params(self, job: Job, op: dict[str, Any]) -> Callable[[], Any] | None:
        node = self._node(op.get("node_name"))
        flags = {k: op.get(k) for k in ("master_candidate", "offline", "drained")}
        for key, value in flags.items():
            if value is not None and not isinstance(value, bool):
                raise prereq(f"Parameter '{key}' must be a boolean", "invalid")
        if all(v is None for v in flags.values()):
            raise prereq("Please pass at least one modification", "invalid")
        if sum(1 for v in flags.values() if v) > 1:
            raise prereq(
                "Only one of master_candidate, offline and drained can be set to True",
                "invalid",
            )
        if node.master and any(v is not None for v in flags.values()):
            # LUNodeSetParams.CheckPrereq: any change of these flags on the
            # master, even to their current value ("master-candidate").
            raise prereq("The master role can be changed only via master-failover", "wrong_input")

        def apply() -> None:
            if flags["offline"] is not None:
                node.offline = flags["offline"]
                if node.offline:
                    node.drained = False
                    node.master_candidate = False
            if flags["drained"] is not None:
                node.drained = flags["drained"]
                if node.drained:
                    node.offline = False
                    node.master_candidate = False
            if flags["master_candidate"] is not None:
                node.master_candidate = flags["master_candidate"]
                if node.master_candidate:
                    node.offline = node.drained = False
            self._touch(node)
            self._log(job, f" - INFO: Node {node.name} modified")

        return apply

    def _op_node_evacuate(self, job: Job, op: dict[str, Any]) -> Callable[[], Any]:
        node = self._node(op.get("node_name"))
        mode = op.get("mode", "all")
        if mode not in ("primary-only", "secondary-only", "all"):
            raise prereq(f"Invalid evacuation mode '{mode}'", "invalid")
        remote = op.get("remote_node")
        if remote is not None:
            target = self._node(remote)
            if target.name == node.name:
                raise prereq("Can not use evacuated node as a new secondary node", "invalid")
            if mode != "secondary-only":
                raise prereq(
                    "Node evacuation with a remote node is only possible for secondary"
                    " instances (mode secondary-only)",
                    "invalid",
                )
        names: list[str] = []
        if mode in ("primary-only", "all"):
            names += self.cluster.primaries(node.name)
        if mode in ("secondary-only", "all"):
            names += self.cluster.secondaries(node.name)
        self._log(
            job,
            f" - INFO: Evacuating instances from node '{node.name}': {', '.join(names)}",
        )
        ops: list[Any] = []  # opcodes or lists of opcodes (one child job each)
        failed: list[str] = []
        reason = [r for r in op.get("reason", []) if not r[0].startswith("gnt:opcode:")]
        for name in names:
            inst = self.cluster.instances[name]
            if inst.primary == node.name:
                if inst.disk_template in model.DRBD_TEMPLATES:
                    move = {
                        "OP_ID": "OP_INSTANCE_MIGRATE"
                        if inst.admin_state == "up"
                        else "OP_INSTANCE_FAILOVER",
                        "instance_name": name,
                        "allow_failover": True,
                        "reason": reason,
                    }
                    if mode == "primary-only":
                        ops.append(move)
                        continue
                    # "all": the old primary must not stay the secondary either.
                    cand = self.allocate(
                        inst,
                        exclude={node.name, *inst.secondaries},
                        need_memory=False,
                        need_disk=True,
                    )
                    if cand is None:
                        failed.append(f"{name} (Can't find any good node: )")
                        continue
                    replace = {
                        "OP_ID": "OP_INSTANCE_REPLACE_DISKS",
                        "instance_name": name,
                        "mode": "replace_new_secondary",
                        "remote_node": cand.name,
                        "early_release": bool(op.get("early_release", False)),
                        "reason": reason,
                    }
                    ops.append([move, replace])  # type: ignore[arg-type]
                elif inst.disk_template in model.SHARED_TEMPLATES | model.DISKLESS_TEMPLATES:
                    dest = self.allocate(
                        inst,
                        exclude={node.name},
                        need_memory=inst.admin_state == "up",
                        need_disk=False,
                    )
                    if dest is None:
                        failed.append(f"{name} (Can't find any good node: )")
                        continue
                    ops.append(
                        {
                            "OP_ID": "OP_INSTANCE_MIGRATE"
                            if inst.admin_state == "up"
                            else "OP_INSTANCE_FAILOVER",
                            "instance_name": name,
                            "target_node": dest.name,
                            "allow_failover": True,
                            "reason": reason,
                        }
                    )
                else:
                    failed.append(
                        f"{name} (Instances of type {inst.disk_template} cannot be relocated)"
                    )
            else:
                new = remote or None
                if new is None:
                    cand = self.allocate(
                        inst,
                        exclude={node.name, inst.primary},
                        need_memory=False,
                        need_disk=True,
                    )
                    if cand is None:
                        failed.append(f"{name} (Can't find any good node: )")
                        continue
                    new = cand.name
                ops.append(
                    {
                        "OP_ID": "OP_INSTANCE_REPLACE_DISKS",
                        "instance_name": name,
                        "mode": "replace_new_secondary",
                        "remote_node": new,
                        "early_release": bool(op.get("early_release", False)),
                        "reason": reason,
                    }
                )
        if failed:
            msg = "Unable to evacuate instances " + ", ".join(failed)
            self._log(job, " - WARNING: " + msg)
            raise OpFailure("OpExecError", msg)

        def apply() -> dict[str, Any]:
            return {"jobs": [[True, self.submit(child)] for child in ops]}

        return apply

    # instances ----------------------------------------------------------------------

    def _move_checks(
        self, inst: SimInstance, op: dict[str, Any], failover: bool
    ) -> tuple[SimNode, bool]:
        """Target node of a migrate/failover and whether it is a primary/secondary swap."""
        what = "failovers" if failover else "migrations"
        target_name = op.get("target_node")
        if inst.disk_template in model.DRBD_TEMPLATES:
            secondary = inst.secondaries[0] if inst.secondaries else None
            if secondary is None:
                raise prereq(f"Instance {inst.name} has no secondary node", "wrong_state")
            if target_name is not None and target_name != secondary:
                raise prereq(
                    f"Instances with disk template drbd cannot be {what[:-1]}ed to"
                    f" arbitrary nodes; target node must be the secondary {secondary}",
                    "invalid",
                )
            target = self._node(secondary)
            swap = True
        elif (
            inst.disk_template in model.SHARED_TEMPLATES
            or inst.disk_template in model.DISKLESS_TEMPLATES
        ):
            if target_name is not None:
                target = self._node(target_name)
                if target.name == inst.primary:
                    raise prereq(
                        f"Cannot migrate instance {inst.name} to its primary ({target.name})",
                        "wrong_state",
                    )
            else:
                found = self.allocate(
                    inst,
                    exclude={inst.primary},
                    need_memory=inst.admin_state == "up",
                    need_disk=False,
                )
                if found is None:
                    raise prereq(
                        "Can't compute nodes using iallocator 'hail': Request failed:"
                        " Can't find any good node: ",
                        "insufficient_resources",
                    )
                target = found
            swap = False
        else:
            raise prereq(
                f"Instance's disk layout '{inst.disk_template}' does not allow {what}",
                "wrong_state",
            )
        self._check_target(target)
        if inst.admin_state == "up":
            self._check_memory(target, inst)
        return target, swap

    def _apply_move(self, inst: SimInstance, target: SimNode, swap: bool) -> Callable[[], Any]:
        def apply() -> None:
            old = inst.primary
            inst.primary = target.name
            if swap:
                inst.secondaries = [old]
            self._touch(inst)

        return apply

    def _op_instance_migrate(self, job: Job, op: dict[str, Any]) -> Callable[[], Any] | None:
        inst = self._instance(op.get("instance_name"))
        if op.get("cleanup"):
            return None
        failover = False
        if inst.admin_state != "up":
            if not op.get("allow_failover"):
                raise prereq(
                    f"Instance {inst.name} is not running, cannot migrate; use failover instead",
                    "wrong_state",
                )
            failover = True
        primary = self.cluster.nodes[inst.primary]
        if primary.offline and not failover:
            if not op.get("allow_failover"):
                raise prereq(
                    f"Can't migrate instance {inst.name}: primary node {primary.name} is offline",
                    "wrong_state",
                )
            failover = True
        target, swap = self._move_checks(inst, op, failover)
        self._log(job, f"* {'failing over' if failover else 'migrating'} instance to {target.name}")
        return self._apply_move(inst, target, swap)

    def _op_instance_failover(self, job: Job, op: dict[str, Any]) -> Callable[[], Any]:
        inst = self._instance(op.get("instance_name"))
        target, swap = self._move_checks(inst, op, True)
        self._log(job, f"* failing over instance {inst.name} to {target.name}")
        return self._apply_move(inst, target, swap)

    def _op_instance_replace_disks(self, job: Job, op: dict[str, Any]) -> Callable[[], Any] | None:
        inst = self._instance(op.get("instance_name"))
        mode = op.get("mode", "replace_auto")
        modes = (
            "replace_on_primary",
            "replace_on_secondary",
            "replace_new_secondary",
            "replace_auto",
        )
        if mode not in modes:
            raise prereq(f"Invalid replace-disks mode '{mode}'", "invalid")
        if inst.disk_template not in model.DRBD_TEMPLATES:
            # What Ganeti 3.0 answers for a non-DRBD instance (real cluster sample).
            raise prereq(
                "The instance has a strange layout, expected one secondary but found"
                f" {len(inst.secondaries)}",
                "internal_error",
            )
        remote, ialloc = op.get("remote_node"), op.get("iallocator")
        if mode != "replace_new_secondary":
            if remote is not None or ialloc is not None:
                raise prereq(
                    "The iallocator and new node options can only be used when"
                    " changing the secondary node",
                    "invalid",
                )
            return None
        if remote is None and ialloc is None:
            raise prereq(
                "When changing the secondary either an iallocator script must be used"
                " or the new node given",
                "invalid",
            )
        if remote is not None:
            target = self._node(remote)
        else:
            found = self.allocate(
                inst,
                exclude={inst.primary, *inst.secondaries},
                need_memory=False,
                need_disk=True,
            )
            if found is None:
                raise _no_good_node(ialloc)
            target = found
        if target.name == inst.primary:
            raise prereq("The specified node is the primary node of the instance", "invalid")
        if target.name in inst.secondaries:
            raise prereq(
                "The specified node is already the secondary node of the instance",
                "invalid",
            )
        self._check_target(target)
        self._check_disk(target, inst)

        def apply() -> None:
            self._log(job, f"STEP 1/6 Check device existence; new secondary {target.name}")
            inst.secondaries = [target.name]
            self._touch(inst)

        return apply

    def _op_instance_recreate_disks(self, job: Job, op: dict[str, Any]) -> Callable[[], Any]:
        inst = self._instance(op.get("instance_name"))
        nodes = op.get("nodes") or []
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise prereq("Parameter 'nodes' must be a list of node names", "invalid")
        old_primary = self.cluster.nodes[inst.primary]
        ialloc = op.get("iallocator")
        if nodes and ialloc:
            raise prereq(
                "Give either the iallocator or the new node(s), not both", "invalid"
            )
        if not ((nodes or ialloc) and old_primary.offline) and inst.admin_state == "up":
            raise prereq(
                f"Instance {inst.name} is marked to be up, cannot recreate disks", "wrong_state"
            )
        new_nodes: list[SimNode] = []
        if nodes:
            expected = 1 + len(inst.secondaries)
            if len(nodes) != expected:
                raise prereq(
                    f"Instance {inst.name} currently has {expected} nodes, but"
                    f" {len(nodes)} were given",
                    "invalid",
                )
            new_nodes = [self._node(n) for n in nodes]
            for n in new_nodes:
                self._check_target(n)
        elif ialloc:
            # Ganeti asks the iallocator to allocate the instance anew: as
            # many usable nodes as it has now (DRBD: primary and secondary).
            for _ in range(1 + len(inst.secondaries)):
                found = self.allocate(
                    inst,
                    exclude={n.name for n in new_nodes},
                    need_memory=not new_nodes,
                    need_disk=True,
                )
                if found is None:
                    raise _no_good_node(ialloc)
                new_nodes.append(found)
        else:
            for name in [inst.primary, *inst.secondaries]:
                if self.cluster.nodes[name].offline:
                    raise prereq(f"Can't use offline node {name}", "wrong_state")

        def apply() -> None:
            if new_nodes:
                inst.primary = new_nodes[0].name
                inst.secondaries = [n.name for n in new_nodes[1:]]
            self._touch(inst)

        return apply

    def _op_instance_reinstall(self, job: Job, op: dict[str, Any]) -> Callable[[], Any]:
        inst = self._instance(op.get("instance_name"))
        primary = self.cluster.nodes[inst.primary]
        if primary.offline:
            raise prereq(f"Can't use offline node {primary.name}", "wrong_state")
        if inst.admin_state == "up":
            raise prereq(
                f"Instance {inst.name} is marked to be up, cannot reinstall", "wrong_state"
            )
        os_name = op.get("os_type") or inst.os

        def apply() -> None:
            inst.os = os_name
            self._touch(inst)

        return apply

    def _op_instance_startup(self, job: Job, op: dict[str, Any]) -> Callable[[], Any] | None:
        inst = self._instance(op.get("instance_name"))
        primary = self.cluster.nodes[inst.primary]
        if primary.offline:
            raise prereq(f"Can't use offline node {primary.name}", "wrong_state")
        if inst.admin_state == "up":
            return None
        self._check_memory(primary, inst)

        def apply() -> None:
            inst.admin_state = "up"
            self._touch(inst)

        return apply

    def _op_instance_shutdown(self, job: Job, op: dict[str, Any]) -> Callable[[], Any]:
        inst = self._instance(op.get("instance_name"))
        primary = self.cluster.nodes[inst.primary]
        if primary.offline and not op.get("ignore_offline_nodes"):
            # Ganeti's CheckNodeOnline (the reinstall job's first opcode).
            raise prereq(
                f"Can't use offline node {primary.name}", "wrong_state"
            )

        def apply() -> None:
            inst.admin_state = "down"
            self._touch(inst)

        return apply
