"""Step 4: ask every online node for its self-diagnose report; new incidents."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from twisted.logger import Logger

from maintd.cluster.mond import MondError
from maintd.daemon.metrics import events_of, record_reports
from maintd.daemon.steps.notes import note
from maintd.decide import incidents as I

log = Logger()


async def collect_step(ctx: Any) -> None:
    if ctx.cluster is None or ctx.mond is None:
        return
    nodes = [n for n in ctx.cluster.nodes.values() if not n.offline]
    reports = await ctx.mond.gather(nodes, ctx.mond.diagnose)
    ctx.reports = dict(reports)
    record_reports(events_of(ctx), "mond", reports)
    failures = sorted(n for n, r in reports.items() if isinstance(r, MondError))
    for name in failures:
        log.warn("no self-diagnose report: {error}", error=reports[name])
    res = I.collect_reports(ctx.state, ctx.cluster, reports, ctx.now,
                            lambda: str(uuidlib.uuid4()))
    for uuid, why in res.forgotten:
        log.info("forgetting canceled incident {uuid}: {why}", uuid=uuid, why=why)
        note(ctx, incident=uuid, action="forget", reason=why)
    for inc in res.created:
        log.info("new incident {uuid} on {node}: {action}", uuid=inc.uuid, node=inc.node_name,
                 action=inc.action.wire)
        note(ctx, incident=inc.uuid, node=inc.node_name, action="noted", report=inc.action.wire)
        ctx.free_nodes.discard(inc.node_name)
    if failures:
        note(ctx, action="collect", unreachable=len(failures), nodes=failures[:20])
    if res.state != ctx.state:
        await ctx.commit(res.state)
