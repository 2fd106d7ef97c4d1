"""``ganeti-maintd`` and ``ganeti-maintd-agent``: twistd plugins as Ganeti daemons.

Ganeti's daemons share one command line convention, which the man page's
synopsis (``ganeti-maintd [-f] [-d] [-p PORT] [-b ADDRESS] [--no-voting
--yes-do-it]``) follows:

* without ``-f`` the daemon forks into the background, with a pid file
  (``/var/run/ganeti/<daemon>.pid``) and a log file
  (``/var/log/ganeti/<log>.log``); the command returns once the daemon has
  started its services (or failed to, with its error and exit status);
* ``-f``/``--foreground`` stays in the foreground and logs to stdout, as
  ``twistd -n`` does, without a pid file (systemd supervises it);
* ``--pidfile`` / ``--logfile`` override those paths; ``--syslog`` logs to
  syslog instead (as Ganeti's daemons can);
* ``--version`` prints the version, ``--help`` every option;
* every other option is the twistd plugin's own (``-d``, ``-p``, ``-b``,
  ``--no-voting --yes-do-it``, ``--config``, ...).

The command is a thin front of the same twistd plugin (``twistd ganeti-maintd``
keeps working): it validates the command line with the plugin's option class
(a usage error is one line on stderr and exit 2), builds twistd's argument
list and runs twistd in this process (:func:`twisted.scripts.twistd.runApp`),
so exit statuses set by the plugin (11 not master, 12 node setup error) reach
the caller unchanged.  ``--log-format json`` (an option of the plugin, also
settable in its ``--config`` file) makes twistd log one JSON object per line
(:mod:`maintd.common.jsonlog`) in both modes.

Exit statuses of the command itself: 0 (started / stopped normally), 1 (the
plugin is not installed, the pid/log directory cannot be created, or twistd
could not start the daemon), 2 (usage error); the plugin's own (11, 12).
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import attrs
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

import maintd
from maintd.common import jsonlog
from maintd.common.cli import usage_exit

#: Options of the launcher itself, never passed on to the plugin.
LAUNCHER_OPTIONS = frozenset({"foreground", "syslog", "pidfile", "logfile", "version", "help"})


@attrs.frozen
class Daemon:
    """One console command: its name, its twistd plugin and its default files."""

    prog: str
    plugin: str
    pidfile: str
    logfile: str


MAINTD = Daemon(
    prog="ganeti-maintd",
    plugin="ganeti-maintd",
    pidfile="/var/run/ganeti/ganeti-maintd.pid",
    logfile="/var/log/ganeti/maintd.log",
)
AGENT = Daemon(
    prog="ganeti-maintd-agent",
    plugin="ganeti-maintd-agent",
    pidfile="/var/run/ganeti/ganeti-maintd-agent.pid",
    logfile="/var/log/ganeti/maintd-agent.log",
)


def find_plugin(tapname: str) -> Any:
    """The installed twistd plugin (``IServiceMaker``) named ``tapname``, or None."""
    for plugin in getPlugins(IServiceMaker):
        if plugin.tapname == tapname:
            return plugin
    return None


def launcher_options(daemon: Daemon, plugin_options: type[usage.Options]) -> type[usage.Options]:
    """The command's option class: the plugin's options plus the launcher's."""
    inner = (getattr(plugin_options, "synopsis", "") or "[options]").strip()
    if inner.startswith("Usage:"):
        inner = inner.split(None, 2)[-1] if len(inner.split(None, 2)) == 3 else "[options]"

    class LauncherOptions(plugin_options):  # type: ignore[valid-type,misc]
        usage_prog = daemon.prog
        synopsis = f"Usage: {daemon.prog} [-f] [--pidfile PATH] [--logfile PATH] {inner}"
        longdesc = (
            f"Runs the twistd plugin {daemon.plugin} as a Ganeti daemon: in the background "
            f"(pid file {daemon.pidfile}, log {daemon.logfile}) unless -f is given. "
            f"Exit status: 0 started (or, with -f, stopped normally), 1 not started, "
            f"2 usage error, and the daemon's own statuses (ganeti-maintd: 11 not the "
            f"master, 12 node setup error). See ganeti-maintd(8)."
        )
        optFlags = [
            ["foreground", "f", "Stay in the foreground and log to stdout (no pid file)."],
            ["syslog", None, f"Log to syslog (ident {daemon.prog}) instead of a file or stdout."],
        ]
        optParameters = [
            ["pidfile", None, None, f"Pid file [default: {daemon.pidfile}; none with -f]."],
            ["logfile", None, None, f"Log file [default: {daemon.logfile}; stdout with -f]."],
        ]

        def opt_version(self) -> NoReturn:
            """Print the version and exit."""
            print(f"{daemon.prog} {maintd.__version__}")
            sys.exit(0)

    LauncherOptions.__name__ = f"{plugin_options.__name__}Launcher"
    return LauncherOptions


def plugin_argv(opts: usage.Options, argv: Sequence[str]) -> list[str]:
    """``argv`` without the launcher's own options, normalised for the plugin
    (``--name=value``; abbreviations and bundled short options expanded)."""
    pairs, args = getopt.getopt(list(argv), opts.shortOpt, opts.longOpt)
    out: list[str] = []
    for opt, value in pairs:
        raw = opt.lstrip("-")
        name = opts.synonyms.get(raw) or opts.synonyms.get(raw.replace("-", "_"), raw)
        if name in LAUNCHER_OPTIONS:
            continue
        if f"{name}=" in opts.longOpt:
            out.append(f"--{name}={value}")
        else:
            out.append(f"--{name}")
    if args:
        out += ["--", *args]
    return out


def log_format(opts: usage.Options) -> str:
    """The plugin's ``--log-format`` (command line or its ``--config`` file)."""
    config = getattr(opts, "daemon_config", None)
    value = getattr(config, "log_format", None) or opts.get("log-format") or "text"
    return str(value)


def twistd_argv(daemon: Daemon, opts: usage.Options, argv: Sequence[str]) -> list[str]:
    """twistd's argument list for this command line (already validated)."""
    pidfile = opts["pidfile"]
    logfile = opts["logfile"]
    if opts["foreground"]:
        head = ["--nodaemon", f"--pidfile={pidfile or ''}"]
    else:
        head = [f"--pidfile={pidfile or daemon.pidfile}"]
        logfile = logfile or daemon.logfile
    if opts["syslog"]:
        head += ["--syslog", f"--prefix={daemon.prog}"]
    elif logfile:
        head.append(f"--logfile={logfile}")
    return [*head, daemon.plugin, *plugin_argv(opts, argv)]


def _make_dirs(daemon: Daemon, args: Sequence[str]) -> None:
    """Create the directories of the pid and log files (as Ganeti's
    daemon-util does), or exit 1 naming the one that cannot be made."""
    for arg in args:
        if arg == daemon.plugin:
            break
        for flag in ("--pidfile=", "--logfile="):
            if arg.startswith(flag) and arg[len(flag):]:
                directory = os.path.dirname(os.path.abspath(arg[len(flag):]))
                try:
                    os.makedirs(directory, mode=0o755, exist_ok=True)
                except OSError as e:
                    sys.stderr.write(f"{daemon.prog}: cannot create {directory} for the "
                                     f"{flag[2:-1]}: {e.strerror or e}; not starting\n")
                    raise SystemExit(1) from None


def run_twistd(prog: str, args: Sequence[str], *, json_log: bool = False) -> int:
    """Run twistd with ``args`` in this process; 0 when it returns normally.

    The plugin's exit statuses (``SystemExit`` from ``makeService``, or the
    ``os._exit`` of a run-time failover) pass through unchanged.
    """
    from twisted.scripts import _twistd_unix, twistd

    config = twistd.ServerOptions()
    try:
        config.parseOptions(list(args))
    except usage.UsageError as e:
        usage_exit(prog, e)
    runner = _twistd_unix.UnixApplicationRunner
    saved = runner.loggerFactory
    if json_log:
        jsonlog.INSTALLED = True
        runner.loggerFactory = jsonlog.JsonAppLogger
    try:
        twistd.runApp(config)
    finally:
        runner.loggerFactory = saved
        jsonlog.INSTALLED = False
    return 0


def run(daemon: Daemon, argv: Sequence[str] | None = None) -> int:
    """The console command ``daemon.prog`` with ``argv`` (default: sys.argv)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    plugin = find_plugin(daemon.plugin)
    if plugin is None:
        sys.stderr.write(
            f"{daemon.prog}: the twistd plugin {daemon.plugin} is not installed "
            f"(twistd --help lists the plugins found); not starting\n"
        )
        return 1
    opts = launcher_options(daemon, plugin.options)()
    try:
        opts.parseOptions(argv)  # --help and --version exit 0 here
    except usage.UsageError as e:
        usage_exit(daemon.prog, e)
    args = twistd_argv(daemon, opts, argv)
    if not opts["foreground"]:
        _make_dirs(daemon, args)
    return run_twistd(daemon.prog, args, json_log=log_format(opts) == "json")


def main() -> NoReturn:
    """Console script ``ganeti-maintd``."""
    sys.exit(run(MAINTD))


def main_agent() -> NoReturn:
    """Console script ``ganeti-maintd-agent``."""
    sys.exit(run(AGENT))
