"""``ganeti-maintd-ctl``: the administrator's tool for the maintenance daemon.

Talks to the daemon's control socket (root only)::

    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] [--json] list [--json]
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] cancel UUID
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] forget UUID
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] status [--json]
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] pause [--for DURATION] [--reason TEXT]
    ganeti-maintd-ctl [--socket PATH | --state-dir DIR] resume | release
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from maintd.admin import ctl_guard
from maintd.common import strictjson

DEFAULT_SOCKET = "/var/lib/ganeti-maintd/ctl.sock"
MAX_ANSWER = 64 * 1024 * 1024


class CtlError(Exception):
    pass


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


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(
        prog="ganeti-maintd-ctl",
        description="List, cancel and forget the incidents of the ganeti-maintd maintenance daemon.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", default=None,
                       help=f"control socket of the daemon (default {DEFAULT_SOCKET})")
    where.add_argument("--state-dir", default=None,
                       help="the daemon's --state-dir (its socket is ctl.sock there)")
    parser.add_argument("--json", action="store_true", help="list: print the raw JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list incidents, awaited jobs and evacuated instances")
    # SUPPRESS: an absent sub-option must not reset a --json given before "list".
    p_list.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the raw JSON")
    p_cancel = sub.add_parser("cancel", help="cancel an incident: no further jobs for it")
    p_cancel.add_argument("uuid")
    p_forget = sub.add_parser("forget", help="forget an incident (as gnt-cluster remove-repair)")
    p_forget.add_argument("uuid")
    ctl_guard.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.socket is None:
        args.socket = (os.path.join(args.state_dir, "ctl.sock") if args.state_dir
                       else DEFAULT_SOCKET)
    try:
        if args.command in ctl_guard.COMMANDS:
            return ctl_guard.run(args, request, out, err)
        if args.command == "list":
            answer = request(args.socket, {"op": "list"})
        else:
            answer = request(args.socket, {"op": args.command, "uuid": args.uuid})
    except CtlError as e:
        err.write(f"ganeti-maintd-ctl: {e}\n")
        return 2
    if not answer.get("ok"):
        err.write(f"ganeti-maintd-ctl: {answer.get('error', 'request failed')}\n")
        return 1
    if args.command == "list":
        if args.json:
            out.write(json.dumps(answer.get("state", {}), indent=2, sort_keys=True) + "\n")
        else:
            print_state(answer.get("state", {}), out)
    elif args.command == "cancel":
        out.write(f"Incident {args.uuid} canceled.\n")
    else:
        out.write(f"Incident {args.uuid} forgotten.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
