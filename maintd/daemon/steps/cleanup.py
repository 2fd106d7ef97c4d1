"""Step 3: forget acknowledged incidents (tag removed) and those of departed nodes.

A failed or completed incident whose tag job failed or was lost never had
its tag set: it is kept and its tag submitted again here (job recorded), so
it is forgotten only when the operator removes a tag that was really there.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from maintd.cluster.rapi.errors import RapiError
from maintd.daemon.steps.notes import note
from maintd.decide import incidents as I

log = Logger()


async def cleanup_step(ctx: Any) -> None:
    if ctx.cluster is None:
        return
    new, gone = I.cleanup(ctx.state, ctx.cluster)
    for uuid, why in gone:
        log.info("forgetting incident {uuid}: {why}", uuid=uuid, why=why)
        note(ctx, incident=uuid, action="forget", reason=why)
    if new != ctx.state:
        await ctx.commit(new)
    for inc in I.tags_due(ctx.state, ctx.cluster):
        await _tag_again(ctx, inc)


async def _tag_again(ctx: Any, inc: Any) -> None:
    if ctx.config.dry_run or not ctx.submitting or ctx.rapi is None:
        note(ctx, incident=inc.uuid, node=inc.node_name, action="tag", tag=inc.tag,
             submitted=False)
        return
    try:
        jid = await ctx.rapi.add_tags("node", inc.node_name, [inc.tag], I.job_reason(inc))
    except RapiError as e:
        log.error("incident {uuid} on {node}: cannot submit tag {tag} (next round again): "
                  "{error}", uuid=inc.uuid, node=inc.node_name, tag=inc.tag, error=e)
        return
    await ctx.commit(I.tag_submitted(ctx.state, inc, int(jid), ctx.now))
    log.info("incident {uuid} on {node}: tag {tag} submitted again, job {job}",
             uuid=inc.uuid, node=inc.node_name, tag=inc.tag, job=jid)
    note(ctx, incident=inc.uuid, node=inc.node_name, action="tag", tag=inc.tag, job=jid)
