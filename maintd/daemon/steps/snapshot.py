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
    log.debug("snapshot: {nodes} nodes, {insts} instances, {free} free",
              nodes=len(ctx.cluster.nodes), insts=len(ctx.cluster.instances),
              free=len(ctx.free_nodes))
