"""The guardrail steps: the pause and the storm breaker (issue 17).

``pause_step`` runs first (the operator's pause from the state, the
``maintd:pause`` tag read with ``GET /2/tags``; the tag as last seen when
that fails) and again right after the snapshot (the tag may have been added
meanwhile).  While paused the round observes and notes but submits no job of
any kind: ``ctx.submitting`` is turned off for the rest of the round, which
every step obeys (as when mastership is lost; never turned back on mid-round).

``storm_step`` runs after the collect step: it counts the nodes whose
self-diagnose report is not ``Ok``, moves the storm breaker and records the
evacuation budget resolved on this snapshot, for the handle step and the
overview.  Incidents the breaker held back whose node reports ``Ok`` again
are canceled (:func:`maintd.decide.guardrails.storm_leftovers`).  The decisions are :mod:`maintd.decide.guardrails`'.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger

from maintd.cluster.rapi.errors import RapiError
from maintd.daemon.control import track
from maintd.daemon.state import Action
from maintd.daemon.steps.notes import note
from maintd.decide import guardrails as G

log = Logger()



async def _cluster_tags(ctx: Any) -> Any:
    """The cluster's tags now (``GET /2/tags``), or None when they cannot be read."""
    if ctx.cluster is not None:
        return ctx.cluster.tags
    read = getattr(ctx.rapi, "tags", None)
    if read is None:
        return None
    try:
        return await read("cluster")
    except RapiError as e:
        # debug only: the snapshot asks RAPI next and says it once if it fails
        log.debug("cannot read the cluster tags ({error}); the pause tag is taken as "
                  "last seen", error=e)
        return None


async def pause_step(ctx: Any) -> None:
    track(ctx)
    guard = dict(ctx.state.guard)
    if G.expired(guard, ctx.now):
        guard = G.resumed(guard)
        log.warn("the operator's pause has ended; resuming")
    tags = await _cluster_tags(ctx)
    if tags is not None:
        guard = G.with_tags(guard, tags)
    if guard != dict(ctx.state.guard):
        before = G.current_pause(ctx.state.guard, ctx.now)
        after = G.current_pause(guard, ctx.now)
        if (before is None) != (after is None):
            if after is not None:
                log.warn("{why}: submitting no jobs", why=after.describe())
            else:
                log.warn("no longer paused: submitting jobs again")
        await ctx.commit(attrs.evolve(ctx.state, guard=guard))
    pause = G.current_pause(guard, ctx.now)
    if pause is None:
        return
    ctx.submitting = False  # never back on in this round
    if ctx.cluster is not None:  # one note per round, after the snapshot
        note(ctx, action="paused", reason=pause.reason, until=pause.until, source=pause.source)


def reporting_nodes(reports: dict[str, Any]) -> list[str]:
    """Nodes whose report this round says something other than ``Ok``."""
    return sorted(name for name, r in reports.items()
                  if isinstance(getattr(r, "status", None), Action) and r.status != Action.OK)


def ok_nodes(reports: dict[str, Any]) -> list[str]:
    """Nodes whose report this round says ``Ok``."""
    return sorted(name for name, r in reports.items()
                  if getattr(r, "status", None) == Action.OK)


async def storm_step(ctx: Any) -> None:
    if ctx.cluster is None:
        return
    nodes = len(ctx.cluster.nodes)
    guard = dict(ctx.state.guard)
    guard["max-evacuating"] = getattr(ctx.config, "max_evacuating",
                                      G.DEFAULT_MAX_EVACUATING).resolve(nodes)
    # reports come from the node agents or from mond (the collect step's source)
    if getattr(ctx, "agent", None) is not None or ctx.mond is not None:
        names = reporting_nodes(ctx.reports)
        threshold = G.storm_threshold(getattr(ctx.config, "storm_threshold",
                                              G.DEFAULT_STORM_THRESHOLD), nodes)
        before = G.Breaker.from_guard(guard)
        after = G.breaker_after(before, len(names), threshold)
        if after.tripped and not before.tripped:
            log.error("storm breaker tripped: {count} of {nodes} nodes report a problem "
                      "({names}), more than the threshold of {threshold}; starting no new "
                      "evacuation or live repair until the count falls under it or "
                      "ganeti-maintd-ctl release", count=len(names), nodes=nodes,
                      names=", ".join(names[:20]) + (" ..." if len(names) > 20 else ""),
                      threshold=threshold)
        elif before.tripped and not after.tripped and not after.released:
            log.warn("storm breaker reset: {count} nodes report a problem, under the "
                     "threshold of {threshold}", count=len(names), threshold=threshold)
        if after.tripped:
            note(ctx, action="storm-breaker", tripped=True, reporting=len(names),
                 threshold=threshold)
        guard["breaker"] = after.to_json()
        state, gone = G.storm_leftovers(ctx.state, ok_nodes(ctx.reports), before.tripped,
                                        ctx.now)
        for inc in gone:
            log.info("incident {uuid} on {node}: {reason}", uuid=inc.uuid, node=inc.node_name,
                     reason=inc.reason)
            note(ctx, incident=inc.uuid, node=inc.node_name, action="cancel", reason=inc.reason)
        if gone:
            await ctx.commit(state)
    if guard != dict(ctx.state.guard):
        await ctx.commit(attrs.evolve(ctx.state, guard=guard))
