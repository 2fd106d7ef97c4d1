"""The Ganeti opcodes maintd's RAPI writes become (pure).

Ganeti's RAPI (``rlib2.py`` of Ganeti 3.0) turns each write into one job:
one opcode for the generic resources (the request body, plus the reason
trail, fills the opcode's parameters; the others keep their defaults), and
for ``POST /2/instances/I/reinstall`` a job of its own making: shutdown,
reinstall, and a startup when ``start`` is true.  This table lets the
interoperability tests compare maintd's harep jobs with the opcodes the real
``harep`` submits over Luxi, opcode by opcode, parameter by parameter.

Only the parameters that change what Ganeti does are kept: the common ones
(``reason``, ``priority``, ``depends``, ``comment``, ``debug_level``,
``dry_run``) and the ``*_uuid(s)`` twins Ganeti fills in from the names are left
out.  Defaults are Ganeti 3.0's (``ganeti/opcodes.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Every parameter of the opcodes maintd's harep duties submit, with Ganeti 3.0's
#: defaults (the instance or tag target is set by the caller).
DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "OP_INSTANCE_FAILOVER": {
        "shutdown_timeout": 120,
        "ignore_consistency": False,
        "target_node": None,
        "ignore_ipolicy": False,
        "cleanup": False,
        "iallocator": None,
    },
    "OP_INSTANCE_MIGRATE": {
        "mode": None,
        "live": None,
        "target_node": None,
        "allow_runtime_changes": True,
        "ignore_ipolicy": False,
        "cleanup": False,
        "iallocator": None,
        "allow_failover": False,
        "ignore_hvversions": False,
    },
    "OP_INSTANCE_REPLACE_DISKS": {
        "early_release": False,
        "ignore_ipolicy": False,
        "mode": None,
        "disks": [],
        "remote_node": None,
        "iallocator": None,
    },
    "OP_INSTANCE_RECREATE_DISKS": {"disks": [], "nodes": [], "iallocator": None},
    "OP_INSTANCE_REINSTALL": {
        "force_variant": False,
        "os_type": None,
        "osparams": None,
        "osparams_private": None,
        "osparams_secret": None,
    },
    "OP_INSTANCE_SHUTDOWN": {
        "force": False,
        "ignore_offline_nodes": False,
        "timeout": 120,
        "no_remember": False,
        "admin_state_source": None,
    },
    "OP_INSTANCE_STARTUP": {
        "force": False,
        "ignore_offline_nodes": False,
        "hvparams": {},
        "beparams": {},
        "no_remember": False,
        "startup_paused": False,
        "shutdown_timeout": 120,
    },
    "OP_TAGS_SET": {"kind": None, "name": None, "tags": None},
    "OP_TAGS_DEL": {"kind": None, "name": None, "tags": None},
}

#: RapiClient write method -> (HTTP method, rlib2 resource class, opcode).
#: ``reinstall_instance`` is the one whose job rlib2 builds itself.
RAPI_WRITES: Mapping[str, tuple[str, str, str]] = {
    "failover_instance": ("PUT", "R_2_instances_name_failover", "OP_INSTANCE_FAILOVER"),
    "migrate_instance": ("PUT", "R_2_instances_name_migrate", "OP_INSTANCE_MIGRATE"),
    "replace_disks": ("POST", "R_2_instances_name_replace_disks", "OP_INSTANCE_REPLACE_DISKS"),
    "recreate_disks": ("POST", "R_2_instances_name_recreate_disks", "OP_INSTANCE_RECREATE_DISKS"),
    "reinstall_instance": ("POST", "R_2_instances_name_reinstall", "OP_INSTANCE_REINSTALL"),
    "shutdown_instance": ("PUT", "R_2_instances_name_shutdown", "OP_INSTANCE_SHUTDOWN"),
    "add_tags": ("PUT", "R_2_instances_name_tags", "OP_TAGS_SET"),
    "remove_tags": ("DELETE", "R_2_instances_name_tags", "OP_TAGS_DEL"),
}


def opcode(op_id: str, target: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``op_id`` with every parameter: ``params`` over Ganeti's defaults."""
    defaults = DEFAULTS[op_id]
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"{op_id}: unknown parameter(s) {sorted(unknown)}")
    return {"OP_ID": op_id, **target, **defaults, **params}


def rapi_job(method: str, instance: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The opcodes of the job RAPI makes of ``RapiClient.<method>(instance, **args)``."""
    if method not in RAPI_WRITES:
        raise ValueError(f"no opcode mapping for RAPI write {method!r}")
    _http, _resource, op_id = RAPI_WRITES[method]
    target = {"instance_name": instance}
    if method in ("add_tags", "remove_tags"):
        tags = {"kind": "instance", "name": instance, "tags": list(args["tags"])}
        return [opcode(op_id, {}, tags)]
    if method == "reinstall_instance":
        job = [
            opcode("OP_INSTANCE_SHUTDOWN", target, {}),
            opcode(op_id, target, {"os_type": args.get("os")}),
        ]
        if args.get("start", True):
            job.append(opcode("OP_INSTANCE_STARTUP", target, {}))
        return job
    return [opcode(op_id, target, dict(args))]


def normalise(op: Mapping[str, Any]) -> dict[str, Any]:
    """An opcode as submitted to Ganeti (over Luxi), reduced to :func:`opcode`'s form."""
    op_id = op["OP_ID"]
    defaults = DEFAULTS[op_id]
    target = {"instance_name": op["instance_name"]} if "instance_name" in op else {}
    params = {k: op[k] for k in defaults if k in op}
    return opcode(op_id, target, params)
