"""One maintenance round: a context handed through an ordered list of steps.

A *step* is ``async def step(ctx: RoundContext) -> None``.  Steps read
``ctx.state`` and change the daemon's state only through ``await
ctx.commit(new_state)``, which returns once the new state is durable (and
the HTTP API shows it).  A step that raises ends the round; the round
service logs it and backs off.  Between steps :func:`run_round` checks
whether the daemon is stopping, so a shutdown waits at most for the step in
progress.

After the steps (whatever happened) the round's summary is committed as
``state.last_round`` (number, start/end, result, error, dry-run flag and the
steps' ``notes``), served at ``/1/last-round``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger

from maintd.daemon.config import DaemonConfig
from maintd.daemon.metrics import NO_EVENTS, RoundEvents, events_of, metered, step_label
from maintd.daemon.state import MaintState

if TYPE_CHECKING:
    from maintd.cluster.model import Cluster
    from maintd.daemon.store import StateStore

log = Logger()

Step = Callable[["RoundContext"], Awaitable[None]]


class RoundStopped(Exception):
    """The daemon is stopping; the round ended at a safe point between steps."""


def _step_name(step: Any) -> str:
    return str(getattr(step, "__qualname__", None) or getattr(step, "__name__", None) or step)


@attrs.define(eq=False)
class RoundContext:
    number: int
    now: float
    config: DaemonConfig
    reactor: Any
    state: MaintState
    store: StateStore | None = None
    rapi: Any = None  # maintd.cluster.rapi.client.RapiClient | None
    mond: Any = None  # maintd.cluster.mond.MondClient | None
    #: maintd.cluster.agent.AgentClient | None: self-diagnose reports (else mond's)
    agent: Any = None
    executor: Any = None  # maintd.cluster.executor.IRepairExecutor | None
    cluster: Cluster | None = None
    free_nodes: set[str] = attrs.field(factory=set)
    notes: list[dict[str, Any]] = attrs.field(factory=list)
    #: This round's self-diagnose reports by node name (set by the collect step).
    reports: dict[str, Any] = attrs.field(factory=dict)
    #: False when jobs must not be submitted (mastership lost).  Dry-run is
    #: ``config.dry_run``: steps decide and note, but submit nothing.
    submitting: bool = True
    #: Our jobs in Ganeti's queue, read by the reconcile step (``maintd.decide.reconcile.QueueJob``).
    queue: Any = None
    #: The daemon's ``maintd.daemon.mastership.Mastership`` (None in unit tests).
    mastership: Any = None
    #: ``maintd.daemon.replication.Replication`` (None: no state replication).
    replica: Any = None
    #: Where the round reports what happened (the daemon's metrics).
    events: RoundEvents = NO_EVENTS

    async def commit(self, new: MaintState) -> None:
        """Durably store ``new`` (when there is a store), then make it current."""
        if self.store is not None:
            self.store.commit(new)
        self.state = new

    def note(self, **fields: Any) -> None:
        """Record a decision (in dry-run: what would have been done)."""
        self.notes.append(fields)


async def run_round(
    ctx: RoundContext,
    steps: Sequence[Step],
    *,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run ``steps`` in order on ``ctx``; record the round in ``last_round``.

    Re-raises a step's exception after recording it.  Raises
    :class:`RoundStopped` when ``should_stop()`` turns true between steps.
    """
    started = time.time()
    events = events_of(ctx)
    result, error = "ok", None
    try:
        for step in steps:
            if should_stop is not None and should_stop():
                raise RoundStopped(f"stopped before step {_step_name(step)}")
            log.debug("round {number}: step {step}", number=ctx.number, step=_step_name(step))
            step_started = time.monotonic()
            try:
                await step(ctx)
            finally:
                events.step_finished(step_label(step), time.monotonic() - step_started)
    except RoundStopped as e:
        result, error = "stopped", str(e)
        raise
    except BaseException as e:
        result, error = "failed", describe_error(e)
        raise
    finally:
        events.round_finished(result, time.time() - started)
        if getattr(ctx, "cluster", None) is not None:
            events.cluster_seen(ctx.cluster)
        summary = {
            "number": ctx.number,
            "start": started,
            "end": time.time(),
            "result": result,
            "error": error,
            "dry_run": ctx.config.dry_run,
            "notes": list(ctx.notes),
        }
        try:
            await ctx.commit(attrs.evolve(ctx.state, last_round=summary))
        except Exception as e:
            # The round's own outcome matters more; the store error is logged.
            log.error(
                "round {number}: cannot record the round: {error}",
                number=ctx.number,
                error=describe_error(e),
            )


def describe_error(e: BaseException) -> str:
    """One line for a log or ``last_round``: the error's class and message."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    return f"{name}: {text}" if text else name


class RoundRunner:
    """Builds each round's context and runs the steps (what the round service calls)."""

    def __init__(
        self,
        *,
        config: DaemonConfig,
        reactor: Any,
        store: StateStore,
        steps: Sequence[Step],
        rapi: Any = None,
        mond: Any = None,
        executor: Any = None,
        agent: Any = None,
        replica: Any = None,
        submitting: Callable[[], bool] | None = None,
        events: RoundEvents = NO_EVENTS,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.store = store
        self.steps = list(steps)
        self.rapi = rapi
        self.mond = mond
        self.agent = agent
        self.replica = replica
        self.executor = executor
        #: Asked at the start of each round (the voting part plugs in here).
        self.submitting = submitting or (lambda: True)
        self.events = events

    def context(self, number: int) -> RoundContext:
        return RoundContext(
            number=number,
            now=self.reactor.seconds(),
            config=self.config,
            reactor=self.reactor,
            state=self.store.state,
            store=self.store,
            rapi=metered(self.rapi, self.events),
            mond=self.mond,
            agent=self.agent,
            replica=self.replica,
            executor=self.executor,
            submitting=self.submitting(),
            events=self.events,
        )

    async def __call__(self, number: int, should_stop: Callable[[], bool]) -> None:
        await run_round(self.context(number), self.steps, should_stop=should_stop)

    async def close(self) -> None:
        """Close the RAPI, mond and agent clients' connections (after the last round)."""
        for name in ("rapi", "mond", "agent"):
            client = getattr(self, name)
            if client is None or not hasattr(client, "close"):
                continue
            try:
                await client.close()
            except Exception as e:
                log.error("closing the {name} client failed: {error}", name=name,
                          error=describe_error(e))
