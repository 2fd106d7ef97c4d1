"""Replication steps: take the newest replica at start; follow the master candidates.

:func:`replica_start_step` runs first in every round but acts once: before
the daemon's first reconciliation it asks the agents on the master
candidates for their copies and takes the newest valid one when the local
state is missing or older (:func:`maintd.decide.replica.choose`); copies
with a bad signature or a future schema are ignored with a log line.
:func:`replica_nodes_step` (after the snapshot) keeps the list of nodes the
state is pushed to current.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from maintd.daemon.replication import candidates
from maintd.daemon.steps.notes import note
from maintd.decide.replica import choose

log = Logger()


async def replica_start_step(ctx: Any) -> None:
    rep = getattr(ctx, "replica", None)
    if rep is None or rep.fetched or ctx.rapi is None:
        return
    cluster = await ctx.rapi.load_cluster()
    nodes = candidates(cluster)
    results = await defer.DeferredList(
        [defer.Deferred.fromCoroutine(rep.client.get(n)) for n in nodes], consumeErrors=True)
    copies: dict[str, bytes] = {}
    for node, (ok, result) in zip(nodes, results, strict=True):
        if not ok:
            log.warn("replication: no replica from {node}: {error}", node=node.name,
                     error=result.getErrorMessage())
        elif result is not None:
            copies[node.name] = result
    choice = choose(copies, rep.key, rep.wallclock(), ctx.state.serial)
    for line in choice.notes:
        log.warn("replication: {line}", line=line)
    if choice.kept:
        log.info("replication: {line}", line=choice.kept)
    if choice.state is not None:
        log.info("replication: taking the replica with serial {serial} from the agent on "
                 "{node} (local state: serial {local}); reconciling it with Ganeti next",
                 serial=choice.serial, node=choice.node, local=ctx.state.serial)
        note(ctx, replica="taken", serial=choice.serial, node=choice.node,
             local_serial=ctx.state.serial)
        await ctx.commit(choice.state)
    elif not copies:
        log.info("replication: no replica on {n} agents; starting from the local state",
                 n=len(nodes))
    rep.fetched = True
    rep.set_nodes(cluster)
    rep.changed(rep.store.state)


async def replica_nodes_step(ctx: Any) -> None:
    rep = getattr(ctx, "replica", None)
    if rep is not None and ctx.cluster is not None:
        rep.set_nodes(ctx.cluster)
