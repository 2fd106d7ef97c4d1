"""maintd's RAPI-write -> opcode table against Ganeti 3.0's own rlib2.py and opcodes.py.

The interoperability tests compare maintd's harep jobs with real harep's
opcode by opcode through :mod:`maintd.decide.harep.opcodes`; these tests
check that table against the installed Ganeti sources: which opcode each
RAPI resource submits, and every parameter's default.
"""

from __future__ import annotations

import ast
import os
import re
from typing import Any

from twisted.trial.unittest import TestCase

from maintd.decide.harep.opcodes import DEFAULTS, RAPI_WRITES, normalise, rapi_job
from tests.tools import skip_or_fail

GANETI = "/usr/share/ganeti/3.0/ganeti"


def op_id(class_name: str) -> str:
    """Ganeti's OP_ID of an opcode class (OpInstanceFailover -> OP_INSTANCE_FAILOVER)."""
    return "OP_" + re.sub(r"(?<!^)(?=[A-Z])", "_", class_name[2:]).upper()


def source(name: str) -> ast.Module:
    path = os.path.join(GANETI, name)
    if not os.path.exists(path):
        skip_or_fail(f"{path} missing (apt-get install ganeti-3.0)")
    with open(path) as f:
        return ast.parse(f.read())


def classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def opcode_defaults(tree: ast.Module) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, cls in classes(tree).items():
        for stmt in cls.body:
            if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", "") == "OP_PARAMS":
                params = {}
                for item in stmt.value.elts:  # type: ignore[attr-defined]
                    if not isinstance(item, ast.Tuple):
                        params[ast.unparse(item)] = "?"  # a shared parameter object
                        continue
                    pname = ast.unparse(item.elts[0]).strip("'\"")
                    try:
                        params[pname] = ast.literal_eval(item.elts[1])
                    except ValueError:
                        params[pname] = ast.unparse(item.elts[1])
                out[op_id(name)] = params
    return out


def resource_opcode(tree: ast.Module, resource: str, method: str) -> str | None:
    """The opcode a resource's ``<METHOD>_OPCODE`` names, following base classes."""
    found = classes(tree)
    cls: ast.ClassDef | None = found.get(resource)
    while cls is not None:
        for stmt in cls.body:
            if (
                isinstance(stmt, ast.Assign)
                and getattr(stmt.targets[0], "id", "") == f"{method}_OPCODE"
            ):
                return op_id(ast.unparse(stmt.value).split(".")[-1])
        bases = [ast.unparse(b) for b in cls.bases]
        cls = next((found[b] for b in bases if b in found), None)
    return None


class OpcodeTableTests(TestCase):
    def test_each_rapi_write_names_the_opcode_rlib2_submits(self) -> None:
        rlib2 = source("rapi/rlib2.py")
        for method, (http, resource, expected) in RAPI_WRITES.items():
            self.assertEqual(resource_opcode(rlib2, resource, http), expected, method)

    def test_rlib2_builds_the_reinstall_job_of_shutdown_reinstall_startup(self) -> None:
        rlib2 = source("rapi/rlib2.py")
        (fn,) = [
            n
            for n in rlib2.body
            if isinstance(n, ast.FunctionDef) and n.name == "_ParseInstanceReinstallRequest"
        ]
        made = [
            op_id(ast.unparse(c.func).split(".")[-1])
            for c in ast.walk(fn)
            if isinstance(c, ast.Call) and ast.unparse(c.func).startswith("opcodes.Op")
        ]
        self.assertEqual(
            made, [op["OP_ID"] for op in rapi_job("reinstall_instance", "i", {"start": True})]
        )
        self.assertEqual(
            [op["OP_ID"] for op in rapi_job("reinstall_instance", "i", {"start": False})],
            made[:2],
        )

    def test_defaults_are_ganetis(self) -> None:
        ganeti = opcode_defaults(source("opcodes.py"))
        for oid, params in DEFAULTS.items():
            theirs = {
                k: v
                for k, v in ganeti[oid].items()
                if k not in ("instance_name", "kind", "name", "tags")
                and not k.endswith(("_uuid", "_uuids"))
            }
            mine = {k: v for k, v in params.items() if k not in ("kind", "name", "tags")}
            self.assertEqual(mine, theirs, oid)

    def test_normalise_fills_defaults_and_drops_common_parameters(self) -> None:
        op = normalise(
            {
                "OP_ID": "OP_INSTANCE_FAILOVER",
                "instance_name": "i",
                "instance_uuid": "u",
                "reason": [["gnt:user", "x", 1]],
                "priority": 0,
                "ignore_consistency": False,
            }
        )
        self.assertEqual(op, rapi_job("failover_instance", "i", {"ignore_consistency": False})[0])
        with self.assertRaises(ValueError):
            rapi_job("failover_instance", "i", {"no_such": 1})
