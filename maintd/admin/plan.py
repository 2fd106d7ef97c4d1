"""``ganeti-maintd-plan``: preview the balancing maintd (or hbal) would do.

Reads hbal's text data (``-t FILE``) or a live cluster over RAPI
(``-m URL``), prints the initial score, the moves and the final score the
way hbal does, or everything as JSON (``--json``).  Option names are
hbal's.  Exit status: 0 success, 1 bad input or options, 2 RAPI failure.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from maintd.cluster.model import Cluster
from maintd.common.cli import ArgumentParser
from maintd.decide.balance.jobsets import (
    aliased,
    commands,
    common_suffix,
    hbal_line,
    move_json,
    split_jobs,
)
from maintd.decide.balance.planner import Options, Plan, final_cluster, plan
from maintd.decide.balance.score import Util
from maintd.decide.balance.text import TextFormatError, format_text, parse_text

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


class PlanError(Exception):
    """A user-facing error (bad file, unknown group, RAPI failure)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="ganeti-maintd-plan",
        description="Compute the cluster balancing hbal would do (faster), without executing it.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-t", "--text-data", metavar="FILE", help="hbal text data file")
    src.add_argument("-m", metavar="URL", dest="rapi", help="RAPI URL of a live cluster")
    p.add_argument("--rapi-user", help="RAPI user name (with -m)")
    p.add_argument("--rapi-password-file", metavar="FILE", help="file holding the RAPI password")
    p.add_argument("--rapi-cert", metavar="FILE", help="pinned RAPI certificate (PEM)")
    p.add_argument(
        "--rapi-insecure", action="store_true", help="do not verify the RAPI certificate"
    )
    p.add_argument("-G", "--group", help="node group to balance (required with several groups)")
    p.add_argument("-l", "--max-length", type=int, default=-1, metavar="N", help="at most N moves")
    p.add_argument("-g", "--min-gain", type=float, default=0.01, metavar="DELTA")
    p.add_argument("--min-gain-limit", type=float, default=0.1, metavar="SCORE")
    p.add_argument("-e", "--min-score", type=float, default=1e-9, metavar="EPSILON")
    p.add_argument("--no-disk-moves", action="store_true", help="no replace-disks moves")
    p.add_argument("--no-instance-moves", action="store_true", help="no failovers/migrations")
    p.add_argument("--ignore-soft-errors", action="store_true")
    p.add_argument("--evac-mode", action="store_true", help="only move instances off offline nodes")
    p.add_argument("--restricted-migration", action="store_true")
    p.add_argument(
        "-U",
        "--dynu-file",
        metavar="FILE",
        help="instance utilisation: 'name cpu mem dsk net' lines",
    )
    p.add_argument("--ignore-dynu", action="store_true", help="ignore dynamic utilisation")
    p.add_argument("-S", "--save", metavar="FILE", help="write the final state as hbal text data")
    p.add_argument(
        "-C", "--print-commands", action="store_true", help="print the gnt-instance commands"
    )
    p.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    return p


def read_util(path: str) -> dict[str, Util]:
    out: dict[str, Util] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise PlanError(f"cannot read utilisation file {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 5:
            raise PlanError(f"{path}:{n}: cannot parse line {line!r}")
        try:
            out[parts[0]] = Util(*(float(x) for x in parts[1:]))
        except ValueError:
            raise PlanError(f"{path}:{n}: cannot parse line {line!r}") from None
    return out


def load_text(path: str) -> Cluster:
    try:
        with open(path) as f:
            data = f.read()
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror}") from None
    try:
        return parse_text(data)
    except TextFormatError as e:
        raise PlanError(f"{path}: {e}") from None


def load_rapi(args: argparse.Namespace) -> Cluster:  # pragma: no cover - exercised in tests
    """Load the cluster over RAPI (pinned certificate, password file) in a private reactor."""
    from twisted.internet import defer, task

    from maintd.cluster.rapi.client import RapiClient
    from maintd.cluster.rapi.errors import RapiError

    result: dict[str, Any] = {}

    async def fetch(reactor: Any) -> None:
        try:
            client = RapiClient.create(
                args.rapi,
                reactor=reactor,
                user=args.rapi_user,
                password_file=args.rapi_password_file,
                cert=args.rapi_cert,
                insecure=args.rapi_insecure,
            )
        except Exception as e:  # RapiConfigError and file errors
            result["error"] = PlanError(str(e))
            return
        try:
            result["cluster"] = await client.load_cluster()
        except RapiError as e:
            result["error"] = PlanError(f"{args.rapi}: {e}", status=2)
        finally:
            await client.close()

    def main(reactor: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(fetch(reactor))

    try:
        task.react(main)
    except SystemExit as e:
        if e.code and "error" not in result:
            raise PlanError(f"cannot load the cluster from {args.rapi}", status=2) from None
    if "error" in result:
        raise result["error"]
    cluster: Cluster = result["cluster"]
    return cluster


def select_group(cluster: Cluster, group: str | None) -> str | None:
    used = sorted({n.group for n in cluster.nodes.values()})
    if group is None:
        if len(used) > 1:
            raise PlanError(
                "found multiple node groups: " + ", ".join(used) + "; choose one with -G"
            )
        return None
    if group not in cluster.groups:
        raise PlanError(
            f"node group {group} not found; node groups: {', '.join(sorted(cluster.groups))}"
        )
    return group


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        max_length=args.max_length,
        min_gain=args.min_gain,
        min_gain_limit=args.min_gain_limit,
        min_score=args.min_score,
        disk_moves=not args.no_disk_moves,
        instance_moves=not args.no_instance_moves,
        restricted_migration=args.restricted_migration,
        ignore_soft_errors=args.ignore_soft_errors,
        evac_mode=args.evac_mode,
    )


def plan_json(result: Plan, cluster: Cluster, seconds: float) -> dict[str, Any]:
    running = {n: i.running and i.oper_state for n, i in cluster.instances.items()}
    return {
        "group": result.group,
        "initial_score": result.initial_score,
        "final_score": result.final_score,
        "optimal_score": result.optimal_score,
        "moves": [move_json(m) for m in result.moves],
        "jobsets": [
            [{**move_json(m), "commands": commands(m, running.get(m.instance, True))} for m in js]
            for js in split_jobs(result.moves)
        ],
        "seconds": round(seconds, 3),
        # CPU seconds of each search step (the last found nothing to take).
        "step_seconds": [round(x, 4) for x in result.step_seconds],
        # CPU seconds to compile the scoring kernel, or load it from numba's cache.
        "kernel_seconds": round(result.kernel_seconds, 3),
    }


def run(argv: Sequence[str], out: TextIO) -> int:
    args = build_parser().parse_args(argv)
    cluster = load_text(args.text_data) if args.text_data else load_rapi(args)
    group = select_group(cluster, args.group)
    util = {} if (args.ignore_dynu or not args.dynu_file) else read_util(args.dynu_file)
    unknown = sorted(set(util) - set(cluster.instances))
    util = {k: v for k, v in util.items() if k not in unknown}
    opts = options_from(args)
    if not cluster.instances:
        if args.json:
            json.dump({"initial_score": 0.0, "final_score": 0.0, "moves": [], "jobsets": []}, out)
            out.write("\n")
        else:
            out.write("Cluster is empty, exiting.\n")
        return 0
    names_n = [n for n in cluster.nodes if group is None or cluster.nodes[n].group == group]
    names_i = [i for i in cluster.instances if cluster.instances[i].primary in set(names_n)]
    suffix = common_suffix(list(cluster.nodes) + list(cluster.instances))
    imlen = max((len(i) - len(suffix) for i in names_i), default=0)
    nmlen = max((len(n) - len(suffix) for n in names_n), default=0)
    text = not args.json

    def show(mv: Any) -> None:
        if text:
            out.write(hbal_line(len(shown) + 1, mv, imlen, nmlen, suffix) + "\n")
            out.flush()
        shown.append(mv)

    shown: list[Any] = []
    if text:
        out.write(f"Loaded {len(cluster.nodes)} nodes, {len(cluster.instances)} instances\n")
        out.write(f"Group size {len(names_n)} nodes, {len(names_i)} instances\n")
        shown_group = group or next((cluster.nodes[n].group for n in names_n), "")
        out.write(f"Selected node group: {shown_group}\n")
    started = time.monotonic()

    def start(score: float) -> None:
        if text:
            out.write(f"Initial score: {score:.8f}\nTrying to minimize the CV...\n")

    result = plan(cluster, opts, group=group, util=util, on_move=show, on_start=start)
    seconds = time.monotonic() - started
    if args.save:
        try:
            with open(args.save, "w") as f:
                f.write(format_text(final_cluster(cluster, result)))
        except OSError as e:
            raise PlanError(f"cannot write {args.save}: {e.strerror}") from None
    if args.json:
        json.dump(plan_json(result, cluster, seconds), out, indent=1)
        out.write("\n")
        return 0
    if result.moves:
        out.write(
            f"Cluster score improved from {result.initial_score:.8f} to {result.final_score:.8f}\n"
        )
    else:
        out.write("No solution found\n")
    out.write(f"Solution length={len(result.moves)}\n")
    if args.print_commands:
        running = {n: i.running and i.oper_state for n, i in cluster.instances.items()}
        out.write("Commands to run to reach the above solution:\n")
        for jsn, js in enumerate(split_jobs(result.moves), 1):
            out.write(f"  \n  echo jobset {jsn}, {len(js)} jobs\n")
            for sn, mv in enumerate(js, 1):
                out.write(f"    echo job {jsn}/{sn}\n")
                # hbal's commands name instances and nodes by their aliases.
                for cmd in commands(aliased(mv, suffix), running.get(mv.instance, True)):
                    out.write(f"    gnt-instance {cmd}\n")
    if args.save:
        out.write(f"The cluster state after balancing has been written to file '{args.save}'\n")
    return 0


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed memory instead of unmapping it.

    The search allocates and frees many NumPy temporaries of a few hundred
    KiB per step; above glibc's mmap threshold each one is a fresh mapping
    whose pages the kernel zeroes again, which cost up to a third of the
    planner's CPU time (system time).  A one-shot command can keep the
    memory; elsewhere (not glibc) this does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> None:
    keep_freed_memory()
    try:
        status = run(sys.argv[1:] if argv is None else argv, sys.stdout)
    except PlanError as e:
        sys.stderr.write(f"ganeti-maintd-plan: {e}\n")
        status = e.status
    sys.exit(status)


if __name__ == "__main__":
    main()
