"""The self-diagnose collector: run the whitelisted diagnose command
periodically and keep its last result as a mond-style report.

Protocol (Ganeti's design-repaird): the command takes no arguments and
prints ONE JSON object ``{"status": "Ok"|"live-repair"|"evacuate"|
"evacuate-failover", "command": NAME?, "details": ANY?}``.  No command
configured means the built-in diagnose, always ``{"status": "Ok"}``.

A command that is not whitelisted, fails, hangs, is killed, or prints
anything else (garbage, truncated, too large, too deep, not UTF-8, extra
members) gives a report whose ``data`` says the collector failed::

    {"collector_failed": true, "reason": "..."}

which the daemon logs and counts, and never turns into an incident.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from maintd.agent import runner, whitelist
from maintd.common import strictjson

log = Logger()

STATUSES = ("Ok", "live-repair", "evacuate", "evacuate-failover")
#: Largest diagnose output accepted (bytes).
MAX_OUTPUT = 16 * 1024
#: Deepest nesting of the diagnose object accepted.
MAX_DEPTH = 16
BUILTIN = {"status": "Ok"}
COLLECTOR = ("diagnose", "node", 1)
#: What ``/1/list/collectors`` answers (mond's shape: name, category, kind).
COLLECTORS = [list(COLLECTOR)]
VERSION = "B"
FORMAT_VERSION = 1


def failed(reason: str) -> dict[str, Any]:
    return {"collector_failed": True, "reason": reason}


def parse_output(name: str, out: bytes) -> dict[str, Any]:
    """The diagnose object printed by command ``name``; ValueError naming it."""
    source = f"output of diagnose command {name}"
    obj = strictjson.loads(out, source, max_bytes=MAX_OUTPUT, max_depth=MAX_DEPTH)
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: not a JSON object but {type(obj).__name__}")
    extra = sorted(set(obj) - {"status", "command", "details"})
    if extra:
        raise ValueError(f"{source}: unknown members {', '.join(repr(e[:32]) for e in extra)}")
    status = obj.get("status")
    if status not in STATUSES:
        raise ValueError(f"{source}: status {str(status)[:64]!r} is not one of "
                         f"{', '.join(STATUSES)}")
    command = obj.get("command")
    if command is not None and command != "":
        try:
            whitelist.check_name(command)
        except whitelist.WhitelistError as e:
            raise ValueError(f"{source}: {e}") from None
    return obj


def report(data: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The mond report envelope around ``data`` (Ganeti's report fields)."""
    name, category, kind = COLLECTOR
    return {
        "name": name,
        "version": VERSION,
        "format_version": FORMAT_VERSION,
        "timestamp": int(now * 1e9),
        "category": category,
        "kind": kind,
        "data": dict(data),
    }


class DiagnoseCollector:
    """Runs the diagnose every ``interval`` seconds (first at start).

    ``data`` is the last result (a diagnose object or a collector-failed
    object); ``when`` the wall-clock time it was taken.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        command: str | None,
        directory: str,
        timeout: float,
        wallclock: Callable[[], float],
        uid: int = 0,
    ) -> None:
        self.reactor = reactor
        #: Owner whitelisted files must have (root; tests: their own user).
        self.uid = uid
        self.command = command or None
        self.directory = directory
        self.timeout = timeout
        self.wallclock = wallclock
        self.data: dict[str, Any] = (dict(BUILTIN) if self.command is None
                                     else failed("the first diagnose has not finished yet"))
        self.when = wallclock()
        self.runs = 0
        self._running: defer.Deferred[None] | None = None

    def run_once(self) -> defer.Deferred[None]:
        """One diagnose run (never fails; a run already going is joined)."""
        if self._running is not None:
            return self._running
        d = defer.Deferred.fromCoroutine(self._run())

        def done(_: Any) -> None:
            self._running = None

        d.addBoth(done)
        if not d.called:
            self._running = d
        return d

    async def _run(self) -> None:
        self.runs += 1
        self.data = await self.diagnose()
        self.when = self.wallclock()

    async def diagnose(self) -> dict[str, Any]:
        if self.command is None:
            return dict(BUILTIN)
        name = self.command
        try:
            path = whitelist.resolve(self.directory, name, uid=self.uid)
        except whitelist.WhitelistError as e:
            log.error("diagnose not run: {error}", error=e)
            return failed(str(e))
        result = await runner.run(self.reactor, path, timeout=self.timeout,
                                  max_stdout=MAX_OUTPUT, max_tail=1024)
        what = f"diagnose command {name}"
        problem = result.describe(what, self.timeout, MAX_OUTPUT)
        if problem:
            tail = result.tail.decode("utf-8", "replace").strip()[-300:]
            log.error("{problem}{sep}{tail}", problem=problem, sep=": " if tail else "",
                      tail=tail)
            return failed(problem)
        try:
            return parse_output(name, result.stdout)
        except ValueError as e:
            log.error("diagnose command {name} printed no valid report: {error}", name=name,
                      error=e)
            return failed(str(e))
