"""Step 3: forget acknowledged incidents (tag removed) and those of departed nodes."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from maintd import incidents as I
from maintd.steps.notes import note

log = Logger()


async def cleanup_step(ctx: Any) -> None:
    if ctx.cluster is None:
        return
    new, gone = I.cleanup(ctx.state, ctx.cluster)
    for uuid, why in gone:
        log.info("forgetting incident {uuid}: {why}", uuid=uuid, why=why)
        note(ctx, incident=uuid, action="forget", reason=why)
    if gone:
        await ctx.commit(new)
