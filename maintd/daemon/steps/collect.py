"""Step 4: ask every online node for its self-diagnose report; new incidents."""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any

import attrs
from twisted.logger import Logger

from maintd.cluster.mond import MondError
from maintd.daemon.metrics import events_of, record_reports
from maintd.daemon.steps.notes import note
from maintd.decide import incidents as I

log = Logger()

#: (maintd.daemon.config.DaemonConfig.max_incidents_per_node)
DEFAULT_MAX_INCIDENTS = 8


def _short(report: Any) -> str:
    text = json.dumps(report, sort_keys=True)
    return text if len(text) <= 200 else text[:200] + "..."


async def collect_step(ctx: Any) -> None:
    if ctx.cluster is None or ctx.mond is None:
        return
    nodes = [n for n in ctx.cluster.nodes.values() if not n.offline]
    offline = sorted(n.name for n in ctx.cluster.nodes.values() if n.offline)
    if not nodes:
        log.warn("collect: no online node to ask for a self-diagnose report "
                 "({offline} offline)", offline=len(offline))
    if offline:
        note(ctx, action="collect", offline=len(offline), offline_nodes=offline[:20])
    reports = await ctx.mond.gather(nodes, ctx.mond.diagnose)
    ctx.reports = dict(reports)
    record_reports(events_of(ctx), "mond", reports)
    failures = sorted(n for n, r in reports.items() if isinstance(r, MondError))
    for name in failures:
        log.warn("no self-diagnose report: {error}", error=reports[name])
    state, dropped = I.drop_unreported(ctx.state, ctx.cluster, reports)
    for inc, why in dropped:
        log.info("dropping noted incident {uuid} on {node}: {why}", uuid=inc.uuid,
                 node=inc.node_name, why=why)
        note(ctx, incident=inc.uuid, node=inc.node_name, action="drop", reason=why)
    res = I.collect_reports(state, ctx.cluster, reports, ctx.now,
                            lambda: str(uuidlib.uuid4()))
    for uuid, why in res.forgotten:
        log.info("forgetting canceled incident {uuid}: {why}", uuid=uuid, why=why)
        note(ctx, incident=uuid, action="forget", reason=why)
    limit = getattr(ctx.config, "max_incidents_per_node", DEFAULT_MAX_INCIDENTS)
    new_state, created, refused = I.cap_per_node(res.state, res.created, limit)
    for inc in refused:
        log.warn("not storing a new {action} incident for {node}: it has {limit} incidents "
                 "(--max-incidents-per-node); report: {report}", action=inc.action.wire,
                 node=inc.node_name, limit=limit, report=_short(inc.original))
        note(ctx, node=inc.node_name, action="refused", report=inc.action.wire,
             reason=f"{limit} incidents on the node (--max-incidents-per-node)")
    res = attrs.evolve(res, state=new_state, created=tuple(created))
    for inc in res.created:
        log.info("new incident {uuid} on {node}: {action}", uuid=inc.uuid, node=inc.node_name,
                 action=inc.action.wire)
        note(ctx, incident=inc.uuid, node=inc.node_name, action="noted", report=inc.action.wire)
        ctx.free_nodes.discard(inc.node_name)
    if failures:
        note(ctx, action="collect", unreachable=len(failures), nodes=failures[:20])
    if res.state != ctx.state:
        await ctx.commit(res.state)
