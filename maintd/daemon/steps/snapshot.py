"""Step 2: the cluster snapshot through RAPI; the free nodes."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from maintd.decide import incidents as I

log = Logger()


async def snapshot_step(ctx: Any) -> None:
    if ctx.rapi is None:
        raise RuntimeError("no RAPI client configured")
    ctx.cluster = await ctx.rapi.load_cluster()
    ctx.free_nodes = I.free_nodes(ctx.cluster, ctx.state)
    _check_master(ctx)
    log.debug("snapshot: {nodes} nodes, {insts} instances, {free} free",
              nodes=len(ctx.cluster.nodes), insts=len(ctx.cluster.instances),
              free=len(ctx.free_nodes))


def _check_master(ctx: Any) -> None:
    """Say so when the snapshot's master node is missing or offline.

    Ganeti refuses to set its master offline, so such a snapshot comes from
    a broken cluster or a broken simulator; the round then finds nothing to
    do on the master (its report is not asked for), which must not go by
    without a word.
    """
    cluster = ctx.cluster
    master = cluster.nodes.get(cluster.master)
    if master is None:
        problem = f"the master node {cluster.master!r} is not among the cluster's nodes"
    elif master.offline:
        problem = (f"the master node {master.name} is offline (Ganeti refuses that: the "
                   "master role can be changed only via master-failover)")
    else:
        return
    log.warn("snapshot: {problem}; its incidents are not collected", problem=problem)
    ctx.notes.append({"step": "snapshot", "problem": problem})
