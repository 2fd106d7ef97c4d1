"""``ganeti-maintd-ctl``: the administrator's tool for the maintenance daemon.

Talks to the daemon's control socket (root only)::

    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] [--json] list [--json]
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] [--json] show UUID|PREFIX
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] cancel UUID|PREFIX
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] forget UUID|PREFIX
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] round-now
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] status [--json]
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] pause [--for DURATION] [--reason TEXT]
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] resume | release

An incident may be named by a unique prefix of its uuid; an ambiguous one is
refused, naming the incidents it matches.

Exit status: 0 done, 1 refused by the daemon (unknown or ambiguous uuid,
incident already final, ...), 2 usage error, 3 the daemon cannot be reached
(no socket, not root, no or malformed answer).

Each command is one function registered with :func:`command` in
:data:`COMMANDS` (its arguments, the request, the output); add new ones the
same way, each in its own block.  The guardrails' commands (status, pause,
resume, release) live in :mod:`maintd.admin.ctl_guard`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import attrs

from maintd.admin import ctl_guard
from maintd.common import strictjson
from maintd.common.cli import EXIT_USAGE, ArgumentParser

DEFAULT_SOCKET = "/var/lib/ganeti-maintd/ctl.sock"
MAX_ANSWER = 64 * 1024 * 1024


EXIT_OK = 0
EXIT_REFUSED = 1
#: (EXIT_USAGE = 2, from maintd.common.cli)
EXIT_UNREACHABLE = 3


class CtlError(Exception):
    """The daemon cannot be reached, or its answer is unusable (exit 3)."""


class Refused(Exception):
    """The daemon answered ``ok: false`` (exit 1); the message is its error."""


def request(path: str, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the control socket at ``path``; the decoded answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except OSError as e:
            raise CtlError(f"cannot connect to {path}: {e.strerror or e} "
                           "(is ganeti-maintd running, are you root?)") from None
        s.sendall(json.dumps(payload).encode() + b"\n")
        chunks = []
        size = 0
        while True:
            data = s.recv(65536)
            if not data:
                break
            size += len(data)
            if size > MAX_ANSWER:
                raise CtlError(f"answer from {path} is too large")
            chunks.append(data)
    except OSError as e:
        raise CtlError(f"talking to {path}: {e}") from None
    finally:
        s.close()
    try:
        answer = strictjson.loads(b"".join(chunks), f"answer from {path}", max_bytes=MAX_ANSWER)
    except strictjson.StrictJSONError as e:
        raise CtlError(f"malformed {e}") from None
    if not isinstance(answer, dict):
        raise CtlError(f"malformed answer from {path}")
    return answer


def _when(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))
    except (TypeError, ValueError, OverflowError):
        return "?"


def format_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def print_state(state: dict[str, Any], out: TextIO) -> None:
    incidents = state.get("incidents", [])
    if incidents:
        rows = [["UUID", "NODE", "ACTION", "STATUS", "JOBS", "CHANGED", "REASON"]]
        for inc in incidents:
            rows.append([
                str(inc.get("uuid", "")),
                str(inc.get("node-name") or inc.get("node", "")),
                str(inc.get("action", "")),
                str(inc.get("repair-status", "")),
                ",".join(str(j) for j in inc.get("jobs", [])) or "-",
                _when(inc.get("mtime")),
                str(inc.get("reason", "")) or "-",
            ])
        format_table(rows, out)
    else:
        out.write("No incidents.\n")
    jobs = state.get("jobs", [])
    out.write(f"Awaited jobs: {', '.join(str(j) for j in jobs) if jobs else 'none'}\n")
    evac = state.get("evacuated", [])
    out.write(f"Evacuated instances: {', '.join(evac) if evac else 'none'}\n")


def print_incident(inc: dict[str, Any], out: TextIO) -> None:
    """``show``: one incident and its jobs, for people."""
    rows = [
        ["Incident", str(inc.get("uuid", ""))],
        ["Node", f"{inc.get('node-name', '')} (uuid {inc.get('node', '')})"],
        ["Action", str(inc.get("action", ""))],
        ["Status", str(inc.get("repair-status", ""))],
        ["Reason", str(inc.get("reason", "")) or "-"],
        ["Created", _when(inc.get("ctime"))],
        ["Changed", _when(inc.get("mtime"))],
    ]
    if "tag-set" in inc:
        state = "set" if inc.get("tag-set") else "not set yet"
        rows.append(["Tag", f"{inc.get('tag', '')} ({state}, job {inc.get('tag-job') or '-'})"])
    report = inc.get("original")
    if isinstance(report, dict) and report.get("details"):
        rows.append(["Report", str(report.get("details"))])
    format_table(rows, out)
    jobs = inc.get("job-details") or []
    if not jobs:
        out.write("Jobs: none\n")
        return
    out.write("Jobs:\n")
    table = [["  ID", "STATUS", "SUMMARY", "ERROR"]]
    for job in jobs:
        table.append([
            f"  {job.get('id', '')}",
            str(job.get("status", "")),
            ", ".join(str(x) for x in job.get("summary") or []) or "-",
            str(job.get("error", "")) or "-",
        ])
    format_table(table, out)


# --- the commands: one function each, registered by name --------------------

Call = Callable[[dict[str, Any]], dict[str, Any]]
Run = Callable[[argparse.Namespace, Call, TextIO], None]


@attrs.frozen
class Command:
    name: str
    help: str
    #: (flags, argparse keyword arguments) of each of its arguments
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]
    run: Run


#: command name -> Command, in the order of ``--help``.
COMMANDS: dict[str, Command] = {}

UUID_ARG = (("uuid",), {"metavar": "UUID|PREFIX",
                        "help": "the incident's uuid, or a prefix of exactly one"})
JSON_ARG = (("--json",), {"action": "store_true", "default": argparse.SUPPRESS,
                          "help": "print the raw JSON"})


def command(name: str, help: str, *arguments: tuple[tuple[str, ...], dict[str, Any]]) -> Callable[[Run], Run]:
    def register(fn: Run) -> Run:
        COMMANDS[name] = Command(name, help, tuple(arguments), fn)
        return fn

    return register


def _json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


@command("list", "list incidents, awaited jobs and evacuated instances", JSON_ARG)
def _list(args: argparse.Namespace, call: Call, out: TextIO) -> None:
    # SUPPRESS: an absent sub-option must not reset a --json given before "list".
    state = call({"op": "list"}).get("state", {})
    if args.json:
        _json(state, out)
    else:
        print_state(state, out)


@command("show", "one incident with its jobs' status and summary", UUID_ARG, JSON_ARG)
def _show(args: argparse.Namespace, call: Call, out: TextIO) -> None:
    inc = call({"op": "show", "uuid": args.uuid}).get("incident") or {}
    if args.json:
        _json(inc, out)
    else:
        print_incident(inc, out)


@command("cancel", "cancel an incident: no further jobs for it", UUID_ARG)
def _cancel(args: argparse.Namespace, call: Call, out: TextIO) -> None:
    answer = call({"op": "cancel", "uuid": args.uuid})
    out.write(f"Incident {answer.get('uuid', args.uuid)} canceled.\n")


@command("forget", "forget an incident (as gnt-cluster remove-repair)", UUID_ARG)
def _forget(args: argparse.Namespace, call: Call, out: TextIO) -> None:
    answer = call({"op": "forget", "uuid": args.uuid})
    out.write(f"Incident {answer.get('uuid', args.uuid)} forgotten.\n")


@command("round-now", "start the next round now (right after the running one, if any)")
def _round_now(args: argparse.Namespace, call: Call, out: TextIO) -> None:
    answer = call({"op": "round-now"})
    if answer.get("round") == "queued":
        out.write(f"A round is running; round {answer.get('number')} starts right after it.\n")
    else:
        out.write(f"Round {answer.get('number')} started.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="ganeti-maintd-ctl",
        description="Talk to the running ganeti-maintd maintenance daemon over its control "
        "socket (root only).",
        epilog="Exit status: 0 done, 1 refused by the daemon (e.g. unknown or ambiguous "
        "uuid), 2 usage error, 3 daemon not reachable (no socket, not root, no answer).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", default=None,
                       help=f"control socket of the daemon (default {DEFAULT_SOCKET})")
    where.add_argument("--state-dir", default=None,
                       help="the daemon's --state-dir (its socket is ctl.sock there)")
    parser.add_argument("--json", action="store_true", help="list, show, status: print the raw JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for flags, kwargs in cmd.arguments:
            p.add_argument(*flags, **kwargs)
    ctl_guard.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line printed)
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if args.socket is None:
        args.socket = (os.path.join(args.state_dir, "ctl.sock") if args.state_dir
                       else DEFAULT_SOCKET)

    def call(payload: dict[str, Any]) -> dict[str, Any]:
        answer = request(args.socket, payload)
        if not answer.get("ok"):
            raise Refused(str(answer.get("error", "request failed")))
        return answer

    try:
        if args.command in ctl_guard.COMMANDS:
            return ctl_guard.run(args, request, out, err)
        COMMANDS[args.command].run(args, call, out)
    except CtlError as e:
        err.write(f"ganeti-maintd-ctl: {e}\n")
        return EXIT_UNREACHABLE
    except Refused as e:
        err.write(f"ganeti-maintd-ctl: {e}\n")
        return EXIT_REFUSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
