"""``ganeti-maintd-ctl status | pause | resume | release`` (issue 17).

``status`` prints the daemon's overview (``GET /1/overview``) for a person
(``--json``: the object itself); ``pause [--for DURATION] [--reason TEXT]``
stops every job submission until ``resume`` (or the end of DURATION);
``release`` re-arms the evacuations and live repairs the storm breaker held
back.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from maintd.decide.guardrails import parse_duration

COMMANDS = ("status", "pause", "resume", "release")

Request = Callable[[str, dict[str, Any]], dict[str, Any]]


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("status", help="the daemon's overview: budget, storm breaker, pause, "
                                      "incidents, next round")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the raw JSON (as GET /1/overview)")
    p = sub.add_parser("pause", help="submit no job of any kind until resumed "
                                     "(observe and note only)")
    p.add_argument("--for", dest="duration", type=_duration, default=None, metavar="DURATION",
                   help="end the pause by itself after DURATION (90s, 15m, 2h, 1d)")
    p.add_argument("--reason", default="", help="why (shown in the status)")
    sub.add_parser("resume", help="end a pause set with 'pause' (not the maintd:pause tag)")
    sub.add_parser("release", help="release the storm breaker: let the reported "
                                   "evacuations and live repairs start")


def _when(ts: Any) -> str:
    if ts is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))
    except (TypeError, ValueError, OverflowError):
        return "?"


def format_pause(paused: Any) -> str:
    if not paused:
        return "no"
    until = paused.get("until")
    end = f"until {_when(until)}" if until is not None else "until resumed"
    src = "ganeti-maintd-ctl pause" if paused.get("source") == "ctl" else "cluster tag maintd:pause"
    return f"yes, {end} (by {src}): {paused.get('reason', '')}"


def print_overview(ov: dict[str, Any], out: TextIO) -> None:
    budget = ov.get("max-evacuating")
    sb = ov.get("storm-breaker") or {}
    state = "TRIPPED" if sb.get("tripped") else "armed"
    counts = ov.get("incidents") or {}
    rows = [
        ("Version", str(ov.get("version", ""))),
        ("Paused", format_pause(ov.get("paused"))),
        ("Under evacuation", f"{ov.get('evacuating', 0)} of at most "
                             f"{budget if budget is not None else '?'} node(s)"),
        ("Storm breaker", f"{state}: {sb.get('reporting', 0)} node(s) reporting a problem, "
                          f"threshold {sb.get('threshold', '?')}"),
        ("Incidents", ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"),
        ("Next round", _when(ov.get("next-round")) if ov.get("next-round") is not None
         else "running or not scheduled"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        out.write(f"{k + ':':<{width + 1}} {v}\n")


def run(args: argparse.Namespace, request: Request, out: TextIO, err: TextIO) -> int:
    """Carry out a guardrail command; raises the caller's CtlError on socket trouble."""
    cmd = args.command
    payload: dict[str, Any] = {"op": "overview" if cmd == "status" else cmd}
    if cmd == "pause":
        payload.update({"reason": args.reason, "for": args.duration})
    answer = request(args.socket, payload)
    if not answer.get("ok"):
        err.write(f"ganeti-maintd-ctl: {answer.get('error', 'request failed')}\n")
        return 1
    if cmd == "status":
        ov = answer.get("overview") or {}
        if getattr(args, "json", False):
            out.write(json.dumps(ov, indent=2, sort_keys=True) + "\n")
        else:
            print_overview(ov, out)
    elif cmd in ("pause", "resume"):
        out.write(f"Paused: {format_pause(answer.get('paused'))}\n")
    else:
        sb = answer.get("storm-breaker") or {}
        out.write(f"Storm breaker released ({sb.get('reporting', 0)} node(s) reporting, "
                  f"threshold {sb.get('threshold', '?')}).\n")
    return 0
