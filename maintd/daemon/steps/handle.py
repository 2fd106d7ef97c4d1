"""Step 5: act on the most severe active incident of every node.

The decisions are :func:`maintd.decide.incidents.decide`'s, held back by the
guardrails (:func:`maintd.decide.guardrails.round_gate`: evacuation budget,
storm breaker, pause, master node) and with every evacuation move taken from
a whole-evacuation plan made on this round's snapshot
(:mod:`maintd.decide.evacplan`).  An incident held back keeps its status and
shows why in its ``reason``.  This step submits the jobs, committing each
job id the moment Ganeti returns it (a Xen primary moved off the drained
node joins the evacuated list in that same commit).  In dry-run (or without
mastership, or paused) it only notes what it would do.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import threads
from twisted.logger import Logger

from maintd.cluster.executor import NoExecutor, RepairResult
from maintd.cluster.rapi.errors import RapiError
from maintd.daemon.state import RepairStatus
from maintd.daemon.steps.notes import note
from maintd.decide import evacplan, evacuation
from maintd.decide import guardrails as G
from maintd.decide import incidents as I

log = Logger()


async def _in_thread(reactor: Any, fn: Any, *args: Any) -> Any:
    """Plan off the reactor thread when the reactor has a thread pool."""
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is None:
        return fn(*args)
    return await threads.deferToThreadPool(reactor, get_pool(), fn, *args)


async def _submit(ctx: Any, inc: Any, plan: I.Plan) -> int | None:
    """Submit the job of ``plan``; returns its id (None when no job)."""
    rapi = ctx.rapi
    reason = I.job_reason(inc)
    match plan:
        case I.Drain(node=node):
            return int(await rapi.set_node_drained(node, True, reason=reason))
        case I.MovePrimary(instance=name, target=target, failover=True, ignore_consistency=f):
            return int(await rapi.failover_instance(name, target_node=target,
                                                    ignore_consistency=f, reason=reason))
        case I.MovePrimary(instance=name, target=target):
            return int(await rapi.migrate_instance(name, target_node=target, mode="live",
                                                   reason=reason))
        case I.ReplaceSecondary(instance=name, new_secondary=new):
            return int(await rapi.replace_disks(name, mode="replace_new_secondary",
                                                remote_node=new, reason=reason))
    return None


async def _finish(ctx: Any, inc: Any) -> None:
    jid = await ctx.rapi.add_tags("node", inc.node_name, [inc.tag], I.job_reason(inc))
    await ctx.commit(I.finished(ctx.state, inc, jid, ctx.now))
    log.info("incident {uuid} on {node} completed, tag {tag}", uuid=inc.uuid,
             node=inc.node_name, tag=inc.tag)
    note(ctx, incident=inc.uuid, node=inc.node_name, action="completed", job=jid)


async def _repair(ctx: Any, inc: Any, command: str) -> None:
    from maintd.daemon.steps.jobs import fail_incident

    executor = ctx.executor if ctx.executor is not None else NoExecutor()
    node = ctx.cluster.nodes[inc.node_name]
    if inc.status == RepairStatus.NOTED:
        await ctx.commit(ctx.state.with_incident(inc.changed(ctx.now,
                                                             status=RepairStatus.PENDING)))
    try:
        result: RepairResult = await executor.execute(node, command, dict(inc.original),
                                                      incident=inc.uuid)
    except Exception as e:
        result = RepairResult(ok=False, reason=f"repair executor error: {e}")
    current = ctx.state.incident(inc.uuid)
    if current is None or current.status.finalized:
        return  # canceled or forgotten meanwhile
    if result.retry:
        log.warn("incident {uuid} on {node}: repair {command} not carried out this round, "
                 "trying again next round: {reason}", uuid=inc.uuid, node=inc.node_name,
                 command=command, reason=result.reason)
        note(ctx, incident=inc.uuid, node=inc.node_name, action="repair-retry",
             reason=result.reason)
        return
    if result.ok:
        await _finish(ctx, current)
    else:
        await fail_incident(ctx, inc.uuid, result.reason or f"repair command {command} failed")


def _round_gate(ctx: Any) -> tuple[G.Gate, evacplan.Planner]:
    cluster = ctx.cluster
    chosen = [i for i in I.most_severe(ctx.state.incidents).values()
              if i.node_name in cluster.nodes]
    planner = evacplan.Planner(cluster, I.incident_nodes(ctx.state))
    gate = G.round_gate(
        chosen,
        master=cluster.master,
        budget=getattr(ctx.config, "max_evacuating", G.DEFAULT_MAX_EVACUATING).resolve(
            len(cluster.nodes)),
        breaker=G.Breaker.from_guard(ctx.state.guard),
        pause=G.current_pause(ctx.state.guard, ctx.now),
        planner=planner,
    )
    return gate, planner


async def _show_reasons(ctx: Any, held: dict[str, str]) -> None:
    """Active incidents carry the reason they are held back (empty otherwise)."""
    new = ctx.state
    for inc in ctx.state.incidents:
        if inc.status.finalized:
            continue
        reason = held.get(inc.uuid, "")
        if inc.reason != reason:
            new = new.with_incident(inc.changed(ctx.now, reason=reason))
            if reason:
                log.info("incident {uuid} on {node} held back: {reason}", uuid=inc.uuid,
                         node=inc.node_name, reason=reason)
    if new is not ctx.state:
        await ctx.commit(new)


async def handle_step(ctx: Any) -> None:
    if ctx.cluster is None:
        return
    gate, planner = await _in_thread(getattr(ctx, "reactor", None), _round_gate, ctx)
    held = dict(gate.waits)

    def gated(inc: Any) -> I.Plan | None:
        reason = gate.waits.get(inc.uuid)
        return I.Wait(reason) if reason is not None else None

    def plan_evac(cluster: Any, node: str, **kw: Any) -> I.Plan:
        plan = gate.plans.get(node) or planner.plan(node)
        return evacplan.next_step(cluster, plan, **kw)

    decisions, touched = I.decide(ctx.cluster, ctx.state, ctx.free_nodes, ctx.state.jobs,
                                  gate=gated, plan_evac=plan_evac)
    for d in decisions:
        plan = gate.plans.get(d.incident.node_name)
        if plan is not None and not plan.feasible and G.is_evacuation(d.incident):
            held[d.incident.uuid] = plan.reason
    await _show_reasons(ctx, held)
    ctx.free_nodes -= touched | I.incident_nodes(ctx.state)
    for d in decisions:
        inc, plan = d.incident, d.plan
        text = I.describe(plan)
        if isinstance(plan, I.Wait):
            log.debug("incident {uuid} on {node}: {plan}", uuid=inc.uuid, node=inc.node_name,
                      plan=text)
            note(ctx, incident=inc.uuid, node=inc.node_name, plan=text, submitted=False)
            continue
        # asked for every job: a pause or a lost mastership stops the rest at once
        if not (ctx.submitting and not ctx.config.dry_run):
            note(ctx, incident=inc.uuid, node=inc.node_name, plan=text, submitted=False)
            continue
        current = ctx.state.incident(inc.uuid)
        if current is None or current.status.finalized:
            continue  # canceled or forgotten while the round ran
        try:
            if isinstance(plan, I.Fail):
                from maintd.daemon.steps.jobs import fail_incident

                await fail_incident(ctx, inc.uuid, plan.reason)
            elif isinstance(plan, I.Finish):
                await _finish(ctx, current)
            elif isinstance(plan, I.Repair):
                await _repair(ctx, current, plan.command)
            else:
                jid = await _submit(ctx, current, plan)
                if jid is not None:
                    new = I.with_job(ctx.state, current, jid, ctx.now)
                    if isinstance(plan, I.MovePrimary) and evacuation.joins(ctx.cluster,
                                                                            plan.instance):
                        new = evacuation.added(new, [plan.instance])
                    await ctx.commit(new)
                    log.info("incident {uuid} on {node}: {plan}, job {job}", uuid=inc.uuid,
                             node=inc.node_name, plan=text, job=jid)
                    note(ctx, incident=inc.uuid, node=inc.node_name, plan=text, job=jid)
        except RapiError as e:
            log.error("incident {uuid} on {node}: {plan} not submitted: {error}",
                      uuid=inc.uuid, node=inc.node_name, plan=text, error=e)
            note(ctx, incident=inc.uuid, node=inc.node_name, plan=text, error=str(e))
