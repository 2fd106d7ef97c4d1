"""``--log-format json``: one JSON object per line, for log shippers.

Every ``twisted.logger`` event becomes one line (UTF-8, no record
separator) holding a flat object:

``time``
    ISO 8601 UTC with microseconds, e.g. ``2026-12-01T01:02:03.456789Z``
``level``
    ``debug``, ``info``, ``warn``, ``error`` or ``critical``
``namespace``
    the logger's namespace (the module, e.g. ``maintd.daemon.scheduler``;
    ``log_legacy`` for old-style ``twisted.python.log`` messages)
``system``
    Twisted's system tag where there is one (``-`` otherwise)
``text``
    the formatted message, as the text log shows it (with the traceback of a
    failure appended)
``format``
    the event's format string (stable across events of one kind: good for
    grouping)
``failure``
    (only for failures) the exception's type and message

followed by the event's own named fields (``number``, ``node``, ``error``,
...), the ones the format string refers to and any others; values that are
not JSON (objects, bytes) are given as their ``str()``.  A field whose name is
one of the keys above is prefixed with ``field_``.  Twisted's internal
``log_*`` keys and the legacy ``message``/``isError``/``format``/``time``
keys are left out.

:class:`JsonAppLogger` is twistd's logger for this format (stdout in the
foreground, the ``--logfile`` otherwise, rotated like twistd's own text log).
"""

from __future__ import annotations

import datetime
import json
import signal
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.logger import FileLogObserver, eventAsText, formatEvent
from twisted.python import logfile
from twisted.scripts._twistd_unix import UnixAppLogger

#: Set by the launcher when twistd will log with :class:`JsonAppLogger`.
INSTALLED = False


def require_installed(prog: str, log_format: str) -> None:
    """Refuse, in one line, ``--log-format json`` where twistd already chose
    its (text) log: only the launcher (``maintd.admin.launcher``, the
    ``ganeti-maintd`` and ``ganeti-maintd-agent`` commands) hands it a JSON one."""
    if log_format == "json" and not INSTALLED:
        raise SystemExit(f"{prog}: --log-format json needs the {prog} command "
                         "(plain twistd writes its own text log); not starting")

RESERVED = ("time", "level", "namespace", "system", "text", "format", "failure")
#: Keys of legacy (twisted.python.log) events that repeat what the line has.
_LEGACY = frozenset({"message", "isError", "format", "time", "system", "why", "failure"})


def _plain(value: Any) -> Any:
    """``value`` if JSON can carry it as is, else its ``str()``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _iso(ts: Any) -> str:
    try:
        when = datetime.datetime.fromtimestamp(float(ts), datetime.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        when = datetime.datetime.now(datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_record(event: Mapping[str, Any]) -> dict[str, Any]:
    """The flat JSON object of one ``twisted.logger`` event."""
    level = event.get("log_level")
    text = eventAsText(dict(event), includeTimestamp=False, includeSystem=False)
    record: dict[str, Any] = {
        "time": _iso(event.get("log_time")),
        "level": getattr(level, "name", "info"),
        "namespace": str(event.get("log_namespace", "-")),
        "system": str(event.get("log_system", event.get("system", "-"))),
        "text": text if text is not None else formatEvent(dict(event)),
        "format": _plain(event.get("log_format")),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = f"{getattr(failure, 'type', type(failure)).__name__}: {failure.getErrorMessage()}"
    legacy = "log_legacy" in event or "isError" in event
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY):
            continue
        name = f"field_{key}" if key in RESERVED else key
        record[name] = _plain(value)
    return record


def format_event(event: Mapping[str, Any]) -> str:
    """One line (with its newline) for ``event``; never raises."""
    try:
        return json.dumps(event_record(event), ensure_ascii=False, allow_nan=False) + "\n"
    except Exception as e:  # a broken event must not silence the log
        return json.dumps({"time": _iso(None), "level": "error", "namespace": "maintd.common.jsonlog",
                           "text": f"unloggable event: {e!r}"}) + "\n"


def json_observer(out: IO[str]) -> FileLogObserver:
    """An observer writing one JSON object per line to ``out``."""
    return FileLogObserver(out, format_event)


class JsonAppLogger(UnixAppLogger):
    """twistd's logger with JSON lines instead of text (syslog stays syslog)."""

    def _getLogObserver(self) -> Callable[[dict[str, Any]], None]:  # noqa: N802
        if self._syslog:
            return super()._getLogObserver()  # type: ignore[no-any-return]
        out: IO[str]
        if self._logfilename == "-" or (self._nodaemon and not self._logfilename):
            if not self._nodaemon:
                sys.exit("Daemons cannot log to stdout, exiting!")
            out = sys.stdout
        else:
            log_file = logfile.LogFile.fromFullPath(self._logfilename or "twistd.log")
            out = log_file  # type: ignore[assignment]
            if not signal.getsignal(signal.SIGUSR1):
                # rotate on SIGUSR1, as twistd does for its text log

                def rotate(signum: int, frame: Any) -> None:
                    from twisted.internet import reactor

                    reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

                signal.signal(signal.SIGUSR1, rotate)
        return json_observer(out)
