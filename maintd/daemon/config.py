"""The daemon's configuration: one frozen value built from options + config file.

:class:`DaemonConfig` has one field per daemon option (see
``docs/ARCHITECTURE.md``), dashes turned into underscores.  It is built by
:func:`build` from the command line (what the user typed) and an optional
``--config`` file (INI with a ``[maintd]`` section, or TOML with top-level keys
or a ``[maintd]`` table); the command line wins, and the defaults below fill
the rest.

Everything here is pure apart from reading the config file and asking the
services database / resolver for the port and hostname defaults.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from maintd.decide.guardrails import (
    DEFAULT_MAX_EVACUATING,
    DEFAULT_STORM_THRESHOLD,
    Limit,
    parse_limit,
)

#: Used when the services database has no ``ganeti-maintd/tcp`` entry.
FALLBACK_PORT = 1816
SERVICE_NAME = "ganeti-maintd"

DEFAULT_STATE_DIR = "/var/lib/ganeti-maintd"
#: Seconds between the end of one round and the start of the next (2.17's
#: ``maintdDefaultRoundDelay``); also the back-off after a failed round.
DEFAULT_ROUND_DELAY = 300.0
CTL_SOCKET_NAME = "ctl.sock"
#: Seconds between rounds while work is in progress (never above round_delay).
DEFAULT_BUSY_ROUND_DELAY = 5.0


class ConfigError(Exception):
    """A bad option value or config file; the message names the option / file."""


def default_port() -> int:
    """The services database's ``ganeti-maintd/tcp`` port, else 1816."""
    try:
        return socket.getservbyname(SERVICE_NAME, "tcp")
    except OSError:
        return FALLBACK_PORT


def default_hostname() -> str:
    return socket.getfqdn()


# --- value parsers (shared by the command line and the config file) --------


def parse_port(text: Any) -> int:
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range 0-65535: {port}")
    return port


def parse_positive_int(text: Any) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"not an integer: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1: {value}")
    return value


def parse_seconds(text: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"must be a finite number >= 0: {text!r}")
    return value


def parse_fraction(text: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"must be a finite number >= 0: {text!r}")
    return value


def parse_bind(text: Any) -> str:
    """An IPv4 or IPv6 address literal (``[::1]`` brackets are accepted)."""
    addr = str(text).strip()
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 address: {text!r}") from None


def parse_url(text: Any) -> str:
    url = str(text).strip()
    if not (url.startswith("https://") or url.startswith("http://")) or "://" == url[-3:]:
        raise ValueError(f"not an http(s) URL: {text!r}")
    return url.rstrip("/")


def parse_str(text: Any) -> str:
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a non-empty string, got {text!r}")
    return text


LOG_FORMATS = ("text", "json")


def parse_log_format(text: Any) -> str:
    value = str(text).strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"not a log format (text or json): {text!r}")
    return value


def parse_iallocator(text: Any) -> str:
    """An iallocator name as Ganeti looks it up (a program name, no path)."""
    name = parse_str(text)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise ValueError(f"bad iallocator name {name!r} (a program name such as hail)")
    return name


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


#: option name (underscores) -> parser, for every option that takes a value.
PARAMETERS: dict[str, Callable[[Any], Any]] = {
    "port": parse_port,
    "bind": parse_bind,
    "rapi": parse_url,
    "rapi_user": parse_str,
    "rapi_password_file": parse_str,
    "rapi_cert": parse_str,
    "rapi_timeout": parse_seconds,
    "state_dir": parse_str,
    "round_delay": parse_seconds,
    "config": parse_str,
    "mond_port": parse_port,
    "mond_path": parse_str,
    "mond_timeout": parse_seconds,
    "mond_parallel": parse_positive_int,
    "job_wait": parse_seconds,
    "balance_threshold": parse_fraction,
    "iallocator": parse_iallocator,
    "ctl_socket": parse_str,
    "ssconf_dir": parse_str,
    "noded_cert": parse_str,
    "noded_port": parse_port,
    "hostname": parse_str,
    "master_check_interval": parse_seconds,
    "repair_command": parse_str,
    "repair_timeout": parse_seconds,
    "log_format": parse_log_format,
    "http_max_connections": parse_positive_int,
    "http_header_timeout": parse_seconds,
    "http_idle_timeout": parse_seconds,
    "max_incidents_per_node": parse_positive_int,
    "max_evacuating": parse_limit,
    "storm_threshold": parse_limit,
    "busy_round_delay": parse_seconds,
    "agent_port": parse_port,
    "agent_cert": parse_str,
    "hmac_key": parse_str,
}

#: Options without a value (``balance`` is tri-state: --balance / --no-balance).
FLAGS = (
    "debug",
    "no_voting",
    "yes_do_it",
    "rapi_insecure",
    "simulate",
    "dry_run",
    "balance",
    "agent_plain_http",
    "allow_unsigned_reports",
)


@attrs.frozen(kw_only=True)
class DaemonConfig:
    debug: bool = False
    port: int = FALLBACK_PORT
    bind: str = "0.0.0.0"
    no_voting: bool = False
    yes_do_it: bool = False
    rapi: str = "https://127.0.0.1:5080"
    rapi_user: str | None = None
    rapi_password_file: str | None = None
    rapi_cert: str = "/var/lib/ganeti/rapi.pem"
    rapi_insecure: bool = False
    rapi_timeout: float = 30.0
    state_dir: str = DEFAULT_STATE_DIR
    round_delay: float = DEFAULT_ROUND_DELAY
    config: str | None = None
    simulate: bool = False
    mond_port: int = 1815
    mond_path: str = "/1/report/node/diagnose"
    mond_timeout: float = 10.0
    #: (maintd.cluster.mond.DEFAULT_PARALLEL; not imported: config stays light)
    mond_parallel: int = 1024
    job_wait: float = 60.0
    dry_run: bool = False
    #: None: follow the cluster's maint_balance (/2/info), off where absent.
    balance: bool | None = None
    #: None: the cluster's maint_balance_threshold, else 0.1.
    balance_threshold: float | None = None
    #: iallocator of harep's repairs; None: the cluster's default, else hail.
    iallocator: str | None = None
    #: Always a path; defaults to ``<state_dir>/ctl.sock``.
    ctl_socket: str = os.path.join(DEFAULT_STATE_DIR, CTL_SOCKET_NAME)
    ssconf_dir: str = "/var/lib/ganeti"
    noded_cert: str = "/var/lib/ganeti/server.pem"
    noded_port: int = 1811
    hostname: str = ""
    master_check_interval: float = 60.0
    #: Absolute path of the live-repair program (None: live repairs fail).
    repair_command: str | None = None
    repair_timeout: float = 600.0
    #: ``text`` (twistd's log) or ``json`` (one object per line; set up by the
    #: ``ganeti-maintd`` command, see maintd.common.jsonlog).
    log_format: str = "text"
    #: HTTP API limits (maintd.daemon.httpguard; a timeout of 0 means none).
    http_max_connections: int = 256
    http_header_timeout: float = 5.0
    http_idle_timeout: float = 60.0
    #: Incidents kept per node; more reports are logged and noted, not stored.
    max_incidents_per_node: int = 8
    #: Nodes under evacuation by the daemon at any time (N or P% of the nodes).
    max_evacuating: Limit = DEFAULT_MAX_EVACUATING
    #: More nodes than this reporting a problem in one round trip the storm breaker.
    storm_threshold: Limit = DEFAULT_STORM_THRESHOLD
    #: Seconds between rounds while work is in progress (capped at round_delay).
    busy_round_delay: float = DEFAULT_BUSY_ROUND_DELAY

    @property
    def next_busy_delay(self) -> float:
        """The busy-round delay actually used: never longer than ``round_delay``."""
        return min(self.busy_round_delay, self.round_delay)
    #: The node agents (ganeti-maintd-agent): port, pinned certificate, plain HTTP.
    agent_port: int = 1817
    agent_cert: str = "/var/lib/ganeti/server.pem"
    agent_plain_http: bool = False
    #: The cluster HMAC key (None: none, only in tests / with unsigned reports).
    hmac_key: str | None = "/var/lib/ganeti/hmac.key"
    allow_unsigned_reports: bool = False

    @classmethod
    def for_tests(cls, **overrides: Any) -> DaemonConfig:
        """Safe defaults for tests: loopback, no voting, quick timeouts.

        ``state_dir`` must be given; ``ctl_socket`` follows it unless given.
        """
        if "state_dir" not in overrides:
            raise TypeError("DaemonConfig.for_tests() needs state_dir=")
        values: dict[str, Any] = {
            "port": 0,
            "bind": "127.0.0.1",
            "no_voting": True,
            "yes_do_it": True,
            "rapi": "http://127.0.0.1:1",
            "rapi_insecure": True,
            "rapi_timeout": 5.0,
            "mond_timeout": 2.0,
            "job_wait": 5.0,
            "hostname": "localhost",
            "agent_plain_http": True,
            "hmac_key": None,
            "ctl_socket": os.path.join(overrides["state_dir"], CTL_SOCKET_NAME),
        }
        values.update(overrides)
        return cls(**values)

    def with_state_dir(self, state_dir: str) -> DaemonConfig:
        """This config on another state dir (the ctl socket moves along when
        it was the default one)."""
        changes: dict[str, Any] = {"state_dir": state_dir}
        if self.ctl_socket == os.path.join(self.state_dir, CTL_SOCKET_NAME):
            changes["ctl_socket"] = os.path.join(state_dir, CTL_SOCKET_NAME)
        return attrs.evolve(self, **changes)

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "state.json")


# --- config file -------------------------------------------------------------


def _normalise_key(key: str, path: str) -> str:
    name = key.strip().lower().replace("-", "_")
    if name not in PARAMETERS and name not in FLAGS and name != "no_balance":
        raise ConfigError(f"{path}: unknown option {key!r}")
    if name == "config":
        raise ConfigError(f"{path}: 'config' cannot be set inside a config file")
    return name


def read_config_file(path: str) -> dict[str, Any]:
    """Parsed, validated values from an INI (``[maintd]``) or TOML file.

    TOML is chosen by the ``.toml`` suffix; anything else is read as INI.
    Raises :class:`ConfigError` naming the file (and the key) on any problem.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    items: Mapping[str, Any]
    if path.endswith(".toml"):
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        items = doc.get("maintd", doc) if isinstance(doc.get("maintd"), dict) else doc
    else:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(raw.decode("utf-8"), source=path)
        except (UnicodeDecodeError, configparser.Error) as e:
            raise ConfigError(f"config file {path} is not valid INI: {e}") from None
        if not parser.has_section("maintd"):
            raise ConfigError(f"config file {path} has no [maintd] section")
        items = dict(parser.items("maintd"))
    out: dict[str, Any] = {}
    for key, value in items.items():
        name = _normalise_key(key, path)
        try:
            if name == "no_balance":
                if parse_bool(value):
                    out["balance"] = False
                continue
            parser_fn = PARAMETERS.get(name, parse_bool)
            out[name] = parser_fn(value)
        except ValueError as e:
            raise ConfigError(f"{path}: option {key!r}: {e}") from None
    return out


# --- composition -------------------------------------------------------------


def build(command_line: Mapping[str, Any]) -> DaemonConfig:
    """The daemon config from what was given on the command line.

    ``command_line`` maps option names (underscores) to *parsed* values, and
    holds only the options the user gave (flags only when set).  A
    ``config`` entry names a file whose values fill what the command line
    left out.  Raises :class:`ConfigError` for bad files or combinations.
    """
    return resolve(command_line)[0]


def resolve(command_line: Mapping[str, Any]) -> tuple[DaemonConfig, frozenset[str]]:
    """:func:`build`, plus the names of the options the user set (command
    line or config file) as opposed to defaults."""
    values: dict[str, Any] = {}
    path = command_line.get("config")
    if path:
        values.update(read_config_file(path))
    values.update(command_line)
    given = frozenset(values)
    if values.get("no_voting") and not values.get("yes_do_it"):
        raise ConfigError(
            "--no-voting skips the master vote and may run two daemons on one "
            "cluster; confirm with --yes-do-it as well"
        )
    if "port" not in values:
        values["port"] = default_port()
    if not values.get("hostname"):
        values["hostname"] = default_hostname()
    state_dir = values.get("state_dir", DEFAULT_STATE_DIR)
    values.setdefault("ctl_socket", os.path.join(state_dir, CTL_SOCKET_NAME))
    return DaemonConfig(**values), given
