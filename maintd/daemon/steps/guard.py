"""The guardrail steps: the pause and the storm breaker (issue 17).

``pause_step`` runs first (with the pause known from the state: the
operator's, or the ``maintd:pause`` tag of the last snapshot) and again right
after the snapshot (the tag as it is now).  While paused the round observes
and notes but submits no job of any kind: ``ctx.submitting`` is turned off,
which every step obeys (as when mastership is lost).

``storm_step`` runs after the collect step: it counts the nodes whose
self-diagnose report is not ``Ok``, moves the storm breaker and records the
evacuation budget resolved on this snapshot, for the handle step and the
overview.  The decisions are :mod:`maintd.decide.guardrails`'.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger

from maintd.daemon.control import track
from maintd.daemon.state import Action
from maintd.daemon.steps.notes import note
from maintd.decide import guardrails as G

log = Logger()


async def pause_step(ctx: Any) -> None:
    track(ctx)
    guard = dict(ctx.state.guard)
    if G.expired(guard, ctx.now):
        guard = G.resumed(guard)
        log.warn("the operator's pause has ended; resuming")
    if ctx.cluster is not None:
        guard = G.with_tags(guard, ctx.cluster.tags)
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
    ctx.submitting = False
    if ctx.cluster is not None:  # one note per round, after the snapshot
        note(ctx, action="paused", reason=pause.reason, until=pause.until, source=pause.source)


def reporting_nodes(reports: dict[str, Any]) -> list[str]:
    """Nodes whose report this round says something other than ``Ok``."""
    return sorted(name for name, r in reports.items()
                  if isinstance(getattr(r, "status", None), Action) and r.status != Action.OK)


async def storm_step(ctx: Any) -> None:
    if ctx.cluster is None:
        return
    nodes = len(ctx.cluster.nodes)
    guard = dict(ctx.state.guard)
    guard["max-evacuating"] = ctx.config.max_evacuating.resolve(nodes)
    if ctx.mond is not None:
        names = reporting_nodes(ctx.reports)
        threshold = G.storm_threshold(ctx.config.storm_threshold, nodes)
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
    if guard != dict(ctx.state.guard):
        await ctx.commit(attrs.evolve(ctx.state, guard=guard))
