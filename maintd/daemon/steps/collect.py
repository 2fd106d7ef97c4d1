"""Step 4: ask every online node for its self-diagnose report; new incidents.

Reports come from the nodes' agents (``ctx.agent``, signed) or, without an
agent client, from their monds (2.17's diagnose collector).  A node without
a usable report (unreachable, invalid, badly signed, stale, or its
diagnose collector failed) is logged naming it and changes nothing.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any

import attrs
from twisted.logger import Logger

from maintd.cluster.agent import AgentError
from maintd.cluster.mond import MondError
from maintd.daemon.steps.notes import note
from maintd.decide import incidents as I

log = Logger()

#: (maintd.daemon.config.DaemonConfig.max_incidents_per_node)
DEFAULT_MAX_INCIDENTS = 8


def _short(report: Any) -> str:
    text = json.dumps(report, sort_keys=True)
    return text if len(text) <= 200 else text[:200] + "..."


async def collect_step(ctx: Any) -> None:
    source = ctx.agent if getattr(ctx, "agent", None) is not None else ctx.mond
    if ctx.cluster is None or source is None:
        return
    nodes = [n for n in ctx.cluster.nodes.values() if not n.offline]
    offline = sorted(n.name for n in ctx.cluster.nodes.values() if n.offline)
    if not nodes:
        log.warn("collect: no online node to ask for a self-diagnose report "
                 "({offline} offline)", offline=len(offline))
    if offline:
        note(ctx, action="collect", offline=len(offline), offline_nodes=offline[:20])
    reports = await source.gather(nodes, source.diagnose)
    ctx.reports = dict(reports)
    failures = sorted(n for n, r in reports.items() if isinstance(r, MondError))
    for name in failures:
        err = reports[name]
        outcome = getattr(err, "outcome", "unreachable")
        if isinstance(err, AgentError) and outcome in ("bad_signature", "collector_failed"):
            log.warn("no self-diagnose report ({outcome}): {error}",
                     outcome=outcome.replace("_", " "), error=err)
        else:
            log.warn("no self-diagnose report: {error}", error=err)
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
