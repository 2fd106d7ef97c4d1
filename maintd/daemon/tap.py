"""Service composition for ``twistd ganeti-maintd``.

:func:`makeService` builds a ``MultiService`` whose children start in this
order (and stop in the reverse one):

1. the log level filter (debug events only with ``-d``),
2. with ``--simulate``: the embedded simulated cluster (``maintd.sim``),
   whose RAPI URL, credentials, certificate and mond port replace the
   configured ones,
3. the HTTP state API on the ``-p``/``-b`` endpoint,
4. the round service (``maintd.daemon.steps.default_steps``), stopped first on
   shutdown so no round runs against a departed simulator or API.

Parts written by other engineers (steps, RAPI client, mond client, simulator,
master voting) are imported lazily: when a module is not there yet the daemon
still starts, with a debug line saying what is missing.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from maintd import __version__
from maintd.cluster.executor import (
    AgentExecutor,
    CommandExecutor,
    ExecutorConfigError,
    IRepairExecutor,
    check_program,
)
from maintd.cluster.jobinfo import JobInfo
from maintd.common import jsonlog
from maintd.common.cli import one_line_usage
from maintd.common.tempdir import TempDirService, temporary_dir
from maintd.daemon import options as _options
from maintd.daemon.api import StateAPI
from maintd.daemon.config import DaemonConfig
from maintd.daemon.fdlimit import ensure_fd_limit, fds_needed
from maintd.daemon.httpguard import HttpLimits
from maintd.daemon.logsetup import LogLevelService
from maintd.daemon.mastership import (
    Mastership,
    attach_runner,
    check_at_startup_or_exit,
    exit_after_shutdown,
    mastership_service,
)
from maintd.daemon.metrics import DaemonMetrics
from maintd.daemon.round import RoundRunner, Step
from maintd.daemon.scheduler import RoundService
from maintd.daemon.store import StateStore, StoreError
from maintd.daemon.ui import StatusPage, refresh_seconds
from maintd.decide import guardrails

log = Logger()

#: twistd's option class for the plugin: a usage error is one line on stderr
#: and exit 2 (see maintd.common.cli).
Options = one_line_usage(_options.Options, "twistd ganeti-maintd")

#: ``--simulate`` without ``--round-delay``: rounds this far apart, and the
#: simulated jobs this long, so that ``make demo`` shows a whole evacuation
#: (node4 reports ``evacuate`` 20 s after the start) within two minutes.
SIMULATE_ROUND_DELAY = 5.0
SIMULATE_JOB_SECONDS = 1.0

__all__ = ["Options", "makeService", "endpoint_description"]


def endpoint_description(port: int, bind: str) -> str:
    """A server endpoint string for ``bind:port`` (IPv6 colons escaped)."""
    kind = "tcp6" if ":" in bind else "tcp"
    return f"{kind}:port={port}:interface={bind.replace(':', chr(92) + ':')}"


def _check_master(config: DaemonConfig) -> Mastership:
    """The master vote (maintd.daemon.mastership; voting part, issue 9).

    Runs here, in makeService, before twistd daemonises: when this host is
    not the master the process exits 11 (12 on unusable ssconf/certificates)
    with the votes on stderr, leaving no pid file and no bound port.
    """
    return check_at_startup_or_exit(config)


def _load_steps(config: DaemonConfig, notes: list[str]) -> list[Step]:
    try:
        from maintd.daemon.steps import default_steps  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        notes.append(f"no round steps yet ({e}): rounds do nothing")
        return []
    return list(default_steps(config))


def _rapi_client(config: DaemonConfig, reactor: Any, notes: list[str]) -> Any:
    try:
        from maintd.cluster.rapi.client import RapiClient  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        notes.append(f"no RAPI client yet ({e})")
        return None
    from maintd.cluster.rapi.errors import RapiConfigError

    try:
        return RapiClient.from_config(config, reactor)
    except RapiConfigError as e:
        # a bad URL, password file or certificate: one line, like a bad store
        raise SystemExit(f"ganeti-maintd: {e}; not starting") from None


def _mond_client(config: DaemonConfig, reactor: Any, notes: list[str]) -> Any:
    try:
        from maintd.cluster.mond import MondClient  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        notes.append(f"no mond client yet ({e})")
        return None
    limit, wanted = ensure_fd_limit(
        fds_needed(config.mond_parallel) + config.http_max_connections
    )
    if limit < wanted:
        log.warn(
            "open-file limit {limit} is below the {wanted} that --mond-parallel {parallel} "
            "may need; nodes may be reported unreachable: lower --mond-parallel or raise "
            "the limit (LimitNOFILE=)",
            limit=limit,
            wanted=wanted,
            parallel=config.mond_parallel,
        )
    return MondClient(
        reactor,
        port=config.mond_port,
        timeout=config.mond_timeout,
        parallel=config.mond_parallel,
        diagnose_path=config.mond_path,
    )


def hmac_key(config: DaemonConfig) -> bytes | None:
    """The cluster HMAC key of ``--hmac-key`` (None when not configured).

    An unreadable key is a startup error, unless unsigned reports are
    allowed (then the daemon goes on without one, saying so).
    """
    from maintd.common import signing

    if config.hmac_key is None:
        return None
    try:
        return signing.read_key(config.hmac_key)
    except signing.KeyFileError as e:
        if config.allow_unsigned_reports:
            log.warn("{error}: only unsigned reports are accepted and live repairs through "
                     "the node agents fail", error=e)
            return None
        raise SystemExit(f"ganeti-maintd: {e}; not starting") from None


def agent_client(config: DaemonConfig, reactor: Any, key: bytes | None) -> Any:
    """The node agents' client (signed self-diagnose reports); None when the
    client modules are not importable (the round then asks mond)."""
    try:
        from maintd.cluster.agent import AgentClient
        from maintd.cluster.rapi.errors import RapiConfigError
    except ImportError:
        return None

    try:
        return AgentClient.create(
            reactor, key=key, cert=None if config.agent_plain_http else config.agent_cert,
            port=config.agent_port, timeout=config.mond_timeout,
            parallel=config.mond_parallel, allow_unsigned=config.allow_unsigned_reports)
    except RapiConfigError as e:
        raise SystemExit(f"ganeti-maintd: node agent certificate: {e}; not starting") from None


def _replication(config: DaemonConfig, reactor: Any, store: StateStore, key: bytes | None,
                 agent: Any) -> Any:
    """State replication to the agents (signed with ``key``); None without key or agents."""
    if key is None or agent is None:
        return None
    from maintd.cluster.rapi.errors import RapiConfigError
    from maintd.cluster.replica import ReplicaClient
    from maintd.daemon.replication import Replication

    try:
        client = ReplicaClient.create(
            reactor, port=config.agent_port, timeout=config.mond_timeout,
            cert=None if config.agent_plain_http else config.agent_cert)
    except RapiConfigError as e:
        raise SystemExit(f"ganeti-maintd: node agent certificate: {e}; not starting") from None
    return Replication(store, client, key)


def repair_executor(config: DaemonConfig, reactor: Any,
                    key: bytes | None = None) -> IRepairExecutor:
    """The live-repair executor: ``--repair-command``'s program, else the
    node agents (:class:`AgentExecutor`, requests signed with ``key``).

    A program that is missing, not a regular executable file, not owned by
    root or the daemon's user, or writable by group/others is a startup error.
    """
    if config.repair_command is None:
        from maintd.cluster.rapi.errors import RapiConfigError

        try:
            return AgentExecutor(
                reactor, key=key, port=config.agent_port,
                cert=None if config.agent_plain_http else config.agent_cert,
                timeout=config.repair_timeout)
        except RapiConfigError as e:
            raise SystemExit(f"ganeti-maintd: node agent certificate: {e}; "
                             "not starting") from None
    try:
        check_program(config.repair_command)
    except ExecutorConfigError as e:
        raise SystemExit(f"ganeti-maintd: {e}; not starting") from None
    return CommandExecutor(reactor, [config.repair_command], timeout=config.repair_timeout)


class _StoreService(service.Service):
    """Releases the state dir lock when the daemon has stopped."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def stopService(self) -> None:
        super().stopService()
        self.store.close()


class _ReplicationService(service.Service):
    """Lets a state push under way finish when the daemon stops."""

    def __init__(self, replication: Any) -> None:
        self.replication = replication

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802
        super().stopService()
        self.replication.fetched = False  # no new push
        return defer.Deferred.fromCoroutine(self.replication.wait())


class _HTTPService(StreamServerEndpointService):
    """Listens for the API; a port in use is a one-line startup error."""

    def __init__(self, endpoint: Any, factory: Any, where: str) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self.where = where

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(
                f"ganeti-maintd: cannot listen on {self.where}: {e.socketError}"
            ) from None


class MaintDaemon(service.MultiService):
    """The daemon's top service; its parts stay reachable for tests."""

    config: DaemonConfig
    store: StateStore
    api: StateAPI
    rounds: RoundService
    control: Any = None
    simulator: Any = None
    #: The node agents' client (None without one); ``agent.counters`` holds
    #: the per-node report outcomes (ok, unreachable, invalid, bad_signature,
    #: collector_failed) for an exporter.
    agent: Any = None
    mastership: Mastership
    metrics: DaemonMetrics

    def __init__(self) -> None:
        super().__init__()
        #: Debug lines from makeService, logged once the level filter is on
        #: (twistd starts logging only after makeService).
        self.startup_notes: list[str] = []

        #: Not a child: it filters before the first child starts and until
        #: the last one has finished stopping (children stop concurrently).
        self.log_level = LogLevelService(debug=False)

    def startService(self) -> None:
        self.log_level.startService()
        super().startService()
        for note in self.startup_notes:
            log.debug("{note}", note=note)

    def stopService(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.maybeDeferred(super().stopService)

        def unfilter(result: object) -> object:
            self.log_level.stopService()
            return result

        d.addBoth(unfilter)
        return d


def _simulator(reactor: Any, config: DaemonConfig) -> tuple[Any, DaemonConfig]:
    from maintd.sim.embed import EmbeddedSimulator  # type: ignore[import-not-found,unused-ignore]

    sim = EmbeddedSimulator(reactor, workdir=os.path.join(config.state_dir, "sim"),
                            job_seconds=SIMULATE_JOB_SECONDS)
    config = attrs.evolve(
        config,
        rapi=sim.rapi_url,
        rapi_user=sim.rapi_user,
        rapi_password_file=sim.rapi_password_file,
        rapi_cert=sim.rapi_cert,
        mond_port=sim.mond_port,
        agent_port=sim.agent_port,
        agent_cert=sim.agent_cert,
        agent_plain_http=sim.plain_http,
        hmac_key=sim.hmac_key_file,
        no_voting=True,
        yes_do_it=True,
    )
    return sim, config


def _open_store(config: DaemonConfig) -> StateStore:
    try:
        return StateStore.open(config.state_dir)
    except StoreError as e:
        raise SystemExit(f"ganeti-maintd: {e}; not starting") from None


def overview_for(config: DaemonConfig, clock: Any, rounds: RoundService) -> Any:
    """The ``/1/overview`` builder of a daemon: the state plus the round service's
    next round and the configured budget."""

    def build(state: Any) -> dict[str, Any]:
        budget = config.max_evacuating.count  # None for P%: the last round's resolution
        return guardrails.overview(state, now=clock.seconds(), max_evacuating=budget,
                                   next_round=rounds.next_round, version=__version__)

    return build


def makeService(options: _options.Options | DaemonConfig, reactor: Any = None) -> MaintDaemon:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    temp_dir: TempDirService | None = None
    if isinstance(options, DaemonConfig):
        config = options
    else:
        config = options.daemon_config
        if config.simulate and "state_dir" not in options.given:
            temp_dir = temporary_dir("ganeti-maintd-sim.")
            config = config.with_state_dir(temp_dir.path)
        if config.simulate and "bind" not in options.given:
            config = attrs.evolve(config, bind="127.0.0.1")  # a demo stays local
        if config.simulate and "round_delay" not in options.given:
            config = attrs.evolve(config, round_delay=SIMULATE_ROUND_DELAY)
    jsonlog.require_installed("ganeti-maintd", config.log_format)

    # a bad --repair-command is an error before anything else starts
    executor = repair_executor(config, reactor) if config.repair_command else None
    top = MaintDaemon()
    top.log_level = LogLevelService(config.debug)
    if temp_dir is not None:
        # Added early so it stops (and removes the dir) last.
        temp_dir.setServiceParent(top)

    if config.simulate:
        # The store first: a state dir that cannot be used is the same
        # one-line error with or without --simulate (whose files go into it).
        store = _open_store(config)
        try:
            sim, config = _simulator(reactor, config)
        except ImportError as e:
            store.close()
            raise SystemExit(f"ganeti-maintd: --simulate is not available yet ({e})") from None
        except (OSError, ValueError) as e:  # sim files, scenario (ScenarioError)
            store.close()
            raise SystemExit(f"ganeti-maintd: cannot start the simulator: {e}; "
                             "not starting") from None
        sim.setServiceParent(top)
        top.simulator = sim
        mastership = Mastership(hostname=config.hostname, verified=False)
    else:
        mastership = _check_master(config)
        store = _open_store(config)

    _StoreService(store).setServiceParent(top)
    try:
        rapi = _rapi_client(config, reactor, top.startup_notes)
        key = hmac_key(config)
        if executor is None:
            executor = repair_executor(config, reactor, key)
        agent = agent_client(config, reactor, key)
        replication = _replication(config, reactor, store, key, agent)
    except SystemExit:
        store.close()
        raise

    # /metrics and /ui read the live parts through callables (rounds: below).
    metrics = DaemonMetrics(lambda: store.state, mastership=mastership)
    store.write_observers.append(metrics.store_write)
    page = StatusPage(
        lambda: store.state,
        refresh=refresh_seconds(config.round_delay),
        cluster=lambda: metrics.cluster,
        mastership=mastership,
    )
    # job status and summary for /1/status/UUID and ganeti-maintd-ctl show
    job_info = JobInfo(rapi, reactor)
    api = StateAPI(store.state, jobs=job_info, metrics=metrics, page=page)
    store.add_listener(api.update)
    site = api.site(debug=config.debug, limits=HttpLimits.from_config(config), reactor=reactor)
    http = _HTTPService(
        endpoints.serverFromString(reactor, endpoint_description(config.port, config.bind)),
        site,
        where=f"{config.bind} port {config.port}",
    )
    http.setName("http")
    http.setServiceParent(top)

    runner = RoundRunner(
        config=config,
        reactor=reactor,
        store=store,
        steps=_load_steps(config, top.startup_notes),
        rapi=rapi,
        mond=_mond_client(config, reactor, top.startup_notes),
        executor=executor,
        events=metrics,
        agent=agent,
        replica=replication,
    )
    if replication is not None:
        store.add_listener(replication.changed)
        _ReplicationService(replication).setServiceParent(top)
    rounds = RoundService(
        runner,
        clock=reactor,
        round_delay=config.round_delay,
        on_stop=runner.close,
        busy_delay=config.next_busy_delay,
        is_busy=lambda: guardrails.work_in_progress(store.state, reactor.seconds()),
    )
    rounds.setServiceParent(top)
    api.overview_fn = overview_for(config, reactor, rounds)
    metrics.overview = page.overview = api.overview
    page.round_running = lambda: rounds.running_round
    # --- voting part (issue 9): rounds submit jobs only while this host is
    # the master; re-check every --master-check-interval, exit 11 when lost.
    mastership.exit = lambda status: exit_after_shutdown(reactor, status)
    attach_runner(runner, mastership)
    recheck = mastership_service(config, mastership, reactor)
    if recheck is not None:
        recheck.setServiceParent(top)
    top.mastership = mastership

    from maintd.daemon.control import ControlService

    control = ControlService(config.ctl_socket, store, reactor)
    control.access.rounds = rounds
    control.access.jobs = job_info
    control.access.overview = api.overview_fn
    control.setServiceParent(top)
    top.control = control

    top.config = config
    top.agent = agent
    top.store = store
    top.api = api
    top.metrics = metrics
    top.rounds = rounds
    log.info(
        "ganeti-maintd: HTTP API on {bind} port {port}, state in {state_dir}, RAPI {rapi}",
        bind=config.bind,
        port=config.port,
        state_dir=config.state_dir,
        rapi=config.rapi,
    )
    if top.simulator is not None:
        _where_to_look(config, top.simulator)
    return top


def _where_to_look(config: DaemonConfig, sim: Any) -> None:
    """With ``--simulate``: the URLs and credentials a newcomer needs."""
    host = "127.0.0.1" if config.bind in ("0.0.0.0", "::") else config.bind
    base = f"http://{host}:{config.port}" if ":" not in host else f"http://[{host}]:{config.port}"
    for line in (
        f"status page {base}/ui ; incidents {base}/1/status (one: {base}/1/status/UUID)",
        f"simulated cluster: RAPI {sim.rapi_url} user {sim.rapi_user} password "
        f"{getattr(sim, 'generated_password', None)} (certificate {sim.rapi_cert}, "
        f"password file {sim.rapi_password_file})",
        f"admin: ganeti-maintd-ctl --socket {config.ctl_socket} list ; "
        f"rounds every {config.round_delay:g}s (--round-delay)",
    ):
        log.info("where to look: {line}", line=line)
