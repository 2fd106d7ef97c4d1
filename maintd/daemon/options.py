"""Command line of ``twistd ganeti-maintd`` (every option of docs/ARCHITECTURE.md).

Parameters default to ``None`` here so that :meth:`Options.postOptions` knows
what the user typed: those values override the ``--config`` file, whose values
override :class:`maintd.daemon.config.DaemonConfig`'s defaults.  The help text shows
the effective defaults.  After parsing, ``options.daemon_config`` holds the
resulting :class:`~maintd.daemon.config.DaemonConfig`.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from maintd.daemon import config as cfg

_D = cfg.DaemonConfig()


def _default(text: object) -> str:
    return f" [default: {text}]"


class Options(usage.Options):
    synopsis = (
        "[-d] [-p PORT] [-b ADDRESS] [--no-voting --yes-do-it] [--rapi URL] "
        "[--state-dir DIR] [--config FILE] [--simulate] [options]"
    )
    longdesc = (
        "ganeti-maintd carries out the regular maintenance of a Ganeti cluster: "
        "it collects the nodes' self-diagnose reports, handles incidents, runs "
        "harep-style instance repairs and balances the cluster, all over RAPI, "
        "and publishes its state read-only over HTTP.  Run it in the foreground "
        "with `twistd -n ganeti-maintd`.  See ganeti-maintd(8)."
    )

    optFlags: list[list[Any]] = [
        ["debug", "d", "Log debug-level events."],
        [
            "no-voting",
            None,
            "Skip the check that a majority of nodes agrees this host is the "
            "master (for failover in two-node clusters); needs --yes-do-it.",
        ],
        ["yes-do-it", None, "Confirm --no-voting."],
        [
            "rapi-insecure",
            None,
            "Do not verify the RAPI server's TLS certificate (testing only).",
        ],
        [
            "simulate",
            None,
            "Run against a built-in simulated cluster (in-process RAPI and mond "
            "on 127.0.0.1; implies no voting; binds 127.0.0.1 and uses a "
            "temporary state dir unless -b / --state-dir are given).",
        ],
        [
            "dry-run",
            None,
            "Read and decide but submit no jobs and set no tags; the plan is "
            "published in /1/last-round.",
        ],
        ["balance", None, "Balance the cluster every round (overrides the cluster setting)."],
        [
            "agent-plain-http",
            None,
            "Talk plain HTTP to the node agents instead of TLS (test agents only).",
        ],
        [
            "allow-unsigned-reports",
            None,
            "Accept self-diagnose reports that are not signed with the cluster HMAC "
            "key (signed ones are still verified).",
        ],
        ["no-balance", None, "Never balance (overrides the cluster setting)."],
    ]

    optParameters: list[list[Any]] = [
        [
            "port",
            "p",
            None,
            "TCP port of the HTTP state API [default: the services database "
            f"entry {cfg.SERVICE_NAME}/tcp, else {cfg.FALLBACK_PORT}].",
            cfg.parse_port,
        ],
        [
            "bind",
            "b",
            None,
            "Address to bind the HTTP API to, IPv4 or IPv6." + _default(_D.bind),
            cfg.parse_bind,
        ],
        ["rapi", None, None, "Base URL of the cluster's RAPI." + _default(_D.rapi), cfg.parse_url],
        [
            "rapi-user",
            None,
            None,
            "RAPI user name for write access (see the RAPI users file).",
            cfg.parse_str,
        ],
        [
            "rapi-password-file",
            None,
            None,
            "File holding the RAPI user's password (first line).",
            cfg.parse_str,
        ],
        [
            "rapi-cert",
            None,
            None,
            "The cluster's RAPI certificate; the server must present exactly this."
            + _default(_D.rapi_cert),
            cfg.parse_str,
        ],
        [
            "rapi-timeout",
            None,
            None,
            "Seconds to wait for one RAPI request." + _default(int(_D.rapi_timeout)),
            cfg.parse_seconds,
        ],
        [
            "state-dir",
            None,
            None,
            "Directory of the durable state (state.json) and the control socket."
            + _default(_D.state_dir),
            cfg.parse_str,
        ],
        [
            "round-delay",
            None,
            None,
            "Seconds from the end of one maintenance round to the start of the "
            "next; also the back-off after a failed round." + _default(int(_D.round_delay)),
            cfg.parse_seconds,
        ],
        [
            "config",
            None,
            None,
            "Config file: INI with a [maintd] section, or TOML (*.toml); keys are "
            "the long option names. The command line wins.",
            cfg.parse_str,
        ],
        [
            "mond-port",
            None,
            None,
            "Port of the nodes' mond." + _default(_D.mond_port),
            cfg.parse_port,
        ],
        [
            "mond-path",
            None,
            None,
            "mond path of the self-diagnose report." + _default(_D.mond_path),
            cfg.parse_str,
        ],
        [
            "mond-timeout",
            None,
            None,
            "Seconds to wait for one node's mond." + _default(int(_D.mond_timeout)),
            cfg.parse_seconds,
        ],
        [
            "mond-parallel",
            None,
            None,
            "How many nodes' mond are queried at once (the soft open-file limit is "
            "raised to match)." + _default(_D.mond_parallel),
            cfg.parse_positive_int,
        ],
        [
            "job-wait",
            None,
            None,
            "Seconds a round waits for the jobs of the previous one before going on."
            + _default(int(_D.job_wait)),
            cfg.parse_seconds,
        ],
        [
            "balance-threshold",
            None,
            None,
            "Minimum cluster score gain for a balancing move [default: the "
            "cluster's maint_balance_threshold, else 0.1].",
            cfg.parse_fraction,
        ],
        [
            "iallocator",
            None,
            None,
            "iallocator of harep's replace-disks and recreate-disks repairs "
            "[default: the cluster's default iallocator, else hail].",
            cfg.parse_iallocator,
        ],
        [
            "ctl-socket",
            None,
            None,
            "UNIX socket of the admin control interface (root only)."
            + _default("<state-dir>/ctl.sock"),
            cfg.parse_str,
        ],
        [
            "ssconf-dir",
            None,
            None,
            "Ganeti's ssconf directory (node list for the master vote)." + _default(_D.ssconf_dir),
            cfg.parse_str,
        ],
        [
            "noded-cert",
            None,
            None,
            "Cluster certificate and key used to ask noded for the master vote."
            + _default(_D.noded_cert),
            cfg.parse_str,
        ],
        ["noded-port", None, None, "Port of noded." + _default(_D.noded_port), cfg.parse_port],
        [
            "hostname",
            None,
            None,
            "This host's name as the cluster knows it [default: this host's FQDN].",
            cfg.parse_str,
        ],
        [
            "master-check-interval",
            None,
            None,
            "Seconds between checks that this host is still the master."
            + _default(int(_D.master_check_interval)),
            cfg.parse_seconds,
        ],
        [
            "repair-command",
            None,
            None,
            "Absolute path of a program that carries out live repairs instead of the "
            "node agents: run as PATH NODE COMMAND with the node's report on stdin, "
            "exit 0 = repaired (root-owned, not group/other-writable) [default: none, "
            "live repairs go to the node's agent].",
            cfg.parse_str,
        ],
        [
            "agent-port",
            None,
            None,
            "Port of the node agents (ganeti-maintd-agent), asked on each node's "
            "primary IP for its signed self-diagnose report and to run live repairs."
            + _default(_D.agent_port),
            cfg.parse_port,
        ],
        [
            "agent-cert",
            None,
            None,
            "The cluster certificate the node agents must present (pinned)."
            + _default(_D.agent_cert),
            cfg.parse_str,
        ],
        [
            "hmac-key",
            None,
            None,
            "The cluster HMAC key: verifies the agents' reports, signs repair requests."
            + _default(_D.hmac_key),
            cfg.parse_str,
        ],
        [
            "repair-timeout",
            None,
            None,
            "Seconds a live repair may take before it is killed and fails."
            + _default(int(_D.repair_timeout)),
            cfg.parse_seconds,
        ],
        [
            "log-format",
            None,
            None,
            "Log as text (twistd's format) or json (one JSON object per line, for "
            "log shippers; needs the ganeti-maintd command)." + _default(_D.log_format),
            cfg.parse_log_format,
        ],
        [
            "http-max-connections",
            None,
            None,
            "Connections the HTTP API keeps open at most; beyond it the least "
            "recently active one is closed (a warning at most once a minute)."
            + _default(_D.http_max_connections),
            cfg.parse_positive_int,
        ],
        [
            "http-header-timeout",
            None,
            None,
            "Seconds an HTTP API client has to send a whole request from its "
            "first byte (or from connecting); slower ones are dropped (0: no limit)."
            + _default(f"{_D.http_header_timeout:g}"),
            cfg.parse_seconds,
        ],
        [
            "http-idle-timeout",
            None,
            None,
            "Seconds an idle keep-alive HTTP API connection stays open (0: no limit)."
            + _default(f"{_D.http_idle_timeout:g}"),
            cfg.parse_seconds,
        ],
        [
            "max-incidents-per-node",
            None,
            None,
            "Incidents kept per node; further reports of that node are logged and "
            "noted in the round, not stored." + _default(_D.max_incidents_per_node),
            cfg.parse_positive_int,
        ],
        [
            "max-evacuating",
            None,
            None,
            "At most this many nodes under evacuation by the daemon at any time: N, "
            "or P% of the cluster's nodes; further evacuations stay noted until a "
            "slot frees up." + _default(_D.max_evacuating),
            cfg.parse_limit,
        ],
        [
            "storm-threshold",
            None,
            None,
            "Storm breaker: when more than this many nodes (N or P% of the nodes, "
            "at least 2) report a problem in one round, start no new evacuation "
            "or live repair." + _default(_D.storm_threshold),
            cfg.parse_limit,
        ],
        [
            "busy-round-delay",
            None,
            None,
            "Seconds from the end of a round to the next while work is in progress "
            "(never longer than --round-delay)." + _default(int(_D.busy_round_delay)),
            cfg.parse_seconds,
        ],
    ]

    daemon_config: cfg.DaemonConfig
    #: Option names (underscores) set by the user, on the command line or in
    #: the config file; the rest are defaults.
    given: frozenset[str]

    def opt_version(self) -> None:
        """Print the version and exit."""
        from maintd import __version__

        print(f"ganeti-maintd {__version__}")
        raise SystemExit(0)

    def command_line(self) -> dict[str, Any]:
        """Parsed values of the options given on the command line only."""
        out: dict[str, Any] = {}
        # Options.*, not self.*: subclasses (the ganeti-maintd command) add
        # options of their own that are not daemon settings.
        for long, *_ in Options.optParameters:
            if self[long] is not None:
                out[long.replace("-", "_")] = self[long]
        for long, *_ in Options.optFlags:
            if self[long] and long not in ("balance", "no-balance"):
                out[long.replace("-", "_")] = True
        if self["balance"] and self["no-balance"]:
            raise usage.UsageError("--balance and --no-balance exclude each other")
        if self["balance"]:
            out["balance"] = True
        elif self["no-balance"]:
            out["balance"] = False
        return out

    def postOptions(self) -> None:
        try:
            self.daemon_config, self.given = cfg.resolve(self.command_line())
        except cfg.ConfigError as e:
            raise usage.UsageError(str(e)) from None
