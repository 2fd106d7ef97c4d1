"""Round step 7: balance the nodes the other steps left free (2.17's auto-balancing).

When enabled (``--balance``, else ``/2/info``'s ``maint_balance``; off when
neither says so) with threshold ``--balance-threshold``, else
``maint_balance_threshold``, else 0.1:

1. live load from mond (:mod:`maintd.decide.balance.load`): ``cpu-avg-load`` of
   every online node, ``xen-cpu-avg-load`` when there are Xen instances,
   ``kvm-inst-rss`` when memory is over-committed; instances in the
   evacuated list may lack data, and leave the list once their data is back;
2. per node group, hbal's greedy planner restricted to ``ctx.free_nodes``
   (moves only touch free nodes, only instances whose nodes are all free
   move), minimum gain = threshold, minimum-gain limit = 10 x threshold;
   planning stops at the end of the first jobset (the only one submitted);
3. the first jobset is submitted over RAPI (each move's operations as
   successive jobs on the instance: migrate/failover and replace-disks, which
   Ganeti runs in order as they queue on the instance lock), every job id
   committed at once; Xen instances moved off an offline/drained node join
   the evacuated list in the commit of their first job.

In dry-run (or without mastership) the plan goes to the round notes only.
Missing load data or a RAPI error is logged and noted; the step then ends
without raising (it is the last step of the round).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import threads
from twisted.logger import Logger

from maintd.cluster.model import Cluster
from maintd.cluster.rapi.errors import RapiError
from maintd.decide import evacuation
from maintd.decide.balance.jobsets import commands
from maintd.decide.balance.load import (
    CPU_REPORT,
    RSS_REPORT,
    XEN_HYPERVISORS,
    XEN_REPORT,
    LiveLoad,
    LoadError,
    NodeReports,
    compute_load,
    memory_ratio,
)
from maintd.decide.balance.moves import Move
from maintd.decide.balance.planner import Options, Plan, PlannedMove, plan
from maintd.decide.reason import BALANCE, format_reason

log = Logger()

DEFAULT_THRESHOLD = 0.1


def settings(config: Any, cluster: Cluster) -> tuple[bool, float]:
    """(enabled, threshold) from the daemon options, else the cluster's 2.17 fields."""
    # getattr: configs of other steps' tests may predate the balance options.
    balance = getattr(config, "balance", None)
    enabled = balance if balance is not None else bool(cluster.maint_balance)
    threshold = getattr(config, "balance_threshold", None)
    if threshold is None:
        threshold = cluster.maint_balance_threshold
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    return bool(enabled), float(threshold)


def first_jobset_plan(
    cluster: Cluster,
    group: str,
    free: set[str],
    threshold: float,
    load: LiveLoad | None,
) -> tuple[Plan, list[PlannedMove]]:
    """Plan ``group`` on the free nodes; returns the plan and its first jobset.

    Planning stops as soon as a move touches a node of the jobset so far:
    that move would open the second jobset, which this round does not run.
    """
    opts = Options(min_gain=threshold, min_gain_limit=10 * threshold, allowed_nodes=free)
    used: set[str] = set()

    def stop(mv: PlannedMove) -> bool:
        if used & set(mv.nodes):
            return True
        used.update(mv.nodes)
        return False

    result = plan(
        cluster,
        opts,
        group=group,
        util=load.util if load else None,
        mem_pool=load.mem_pool if load else None,
        stop=stop,
    )
    return result, list(result.moves)


async def _in_thread(reactor: Any, fn: Any, *args: Any) -> Any:
    """Run the CPU-heavy planner off the reactor thread when the reactor has a pool."""
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is None:
        return fn(*args)
    return await threads.deferToThreadPool(reactor, get_pool(), fn, *args)


async def _reports(ctx: Any, cluster: Cluster) -> dict[str, NodeReports]:
    nodes = [n for n in cluster.nodes.values() if not (n.offline or n.drained)]
    want_xen = any(i.hypervisor in XEN_HYPERVISORS for i in cluster.instances.values())
    want_rss = memory_ratio(cluster) > 1.0
    mond = ctx.mond

    async def one(node: Any) -> NodeReports:
        cpu = await mond.report(node, *CPU_REPORT)
        xen = await mond.report(node, *XEN_REPORT) if want_xen else None
        rss = await mond.report(node, *RSS_REPORT) if want_rss else None
        return NodeReports(cpu=cpu, xen=xen, rss=rss)

    got = await mond.gather(nodes, one)
    out: dict[str, NodeReports] = {}
    for name, rep in got.items():
        if isinstance(rep, NodeReports):
            out[name] = rep
        else:
            log.warn("balance: {error}", error=rep)
    return out


def _submitting(ctx: Any) -> bool:
    """Jobs may be submitted: not dry-run and mastership held."""
    return bool(getattr(ctx, "submitting", True)) and not getattr(ctx.config, "dry_run", False)


def _note(ctx: Any, **fields: Any) -> None:
    fields = {"step": "balance", **fields}
    if not _submitting(ctx):
        fields["dry_run"] = True
    ctx.notes.append(fields)


def reason(instance: str) -> str:
    """The balance marker of every job of a balancing move (:mod:`maintd.decide.reason`)."""
    return format_reason(BALANCE, instance)


async def _submit_move(ctx: Any, cluster: Cluster, mv: PlannedMove) -> list[int]:
    """Submit a move's operations (hbal's ``iMoveToJob``) as jobs; returns their ids."""
    rapi = ctx.rapi
    inst = cluster.instances[mv.instance]
    running = inst.running and inst.oper_state

    async def migrate(target: str | None = None) -> int:
        if running and not inst.forthcoming:
            return int(
                await rapi.migrate_instance(
                    mv.instance, target_node=target, mode="live", allow_failover=True, reason=reason(mv.instance)
                )
            )
        return int(await rapi.failover_instance(mv.instance, target_node=target, reason=reason(mv.instance)))

    async def replace(node: str | None) -> int:
        return int(
            await rapi.replace_disks(
                mv.instance, mode="replace_new_secondary", remote_node=node, reason=reason(mv.instance)
            )
        )

    plans: dict[Move, list[tuple[str, str | None]]] = {
        Move.FAILOVER: [("mig", None)],
        Move.FAILOVER_TO_ANY: [("mig", mv.new_primary)],
        Move.REPLACE_PRIMARY: [("mig", None), ("rep", mv.new_primary), ("mig", None)],
        Move.REPLACE_SECONDARY: [("rep", mv.new_secondary)],
        Move.REPLACE_AND_FAILOVER: [("rep", mv.new_primary), ("mig", None)],
        Move.FAILOVER_AND_REPLACE: [("mig", None), ("rep", mv.new_secondary)],
    }
    steps = plans[mv.kind]
    jobs: list[int] = []
    evac = [mv.instance] if evacuated_by(cluster, mv) else []
    for op, node in steps:
        job = await (migrate(node) if op == "mig" else replace(node))
        jobs.append(job)
        new = attrs.evolve(ctx.state, jobs=tuple(ctx.state.jobs) + (job,))
        await ctx.commit(evacuation.added(new, evac))
    return jobs


async def balance_step(ctx: Any) -> None:
    cluster: Cluster | None = ctx.cluster
    if cluster is None:
        return
    enabled, threshold = settings(ctx.config, cluster)
    if not enabled:
        return
    free = set(ctx.free_nodes)
    load: LiveLoad | None = None
    if ctx.mond is not None:
        reports = await _reports(ctx, cluster)
        try:
            load = compute_load(cluster, reports, ctx.state.evacuated)
        except LoadError as err:
            log.error("balance: not balancing this round: {error}", error=err)
            _note(ctx, result="skipped", reason=f"load data: {err}")
            return
        if load.evacuated != tuple(ctx.state.evacuated):
            await ctx.commit(attrs.evolve(ctx.state, evacuated=load.evacuated))
    groups = sorted({n.group for n in cluster.nodes.values() if n.name in free})
    submit = _submitting(ctx) and ctx.rapi is not None
    for group in groups:
        result, jobset = await _in_thread(
            ctx.reactor, first_jobset_plan, cluster, group, set(free), threshold, load
        )
        _note(
            ctx,
            group=group,
            initial_score=result.initial_score,
            score_after_jobset=result.final_score,
            moves=len(jobset),
        )
        log.info(
            "balance: group {group}: score {ini:.8f} -> {fin:.8f}, {n} move(s) in the first jobset",
            group=group,
            ini=result.initial_score,
            fin=result.final_score,
            n=len(jobset),
        )
        for mv in jobset:
            fields: dict[str, Any] = {
                "instance": mv.instance,
                "kind": mv.kind.short,
                "from": mv.old_primary,
                "to": mv.target,
                "commands": commands(mv, cluster.instances[mv.instance].running),
            }
            if not submit:
                _note(ctx, **fields)
                continue
            try:
                jobs = await _submit_move(ctx, cluster, mv)
            except RapiError as err:
                log.error("balance: instance {instance}: {error}", instance=mv.instance, error=err)
                _note(ctx, **fields, error=f"RAPI: {err}")
                return
            _note(ctx, **fields, jobs=jobs)
        free -= {n for mv in jobset for n in mv.nodes}


def evacuated_by(cluster: Cluster, mv: PlannedMove) -> bool:
    """A Xen instance moved off an offline/drained node (its load data lags behind)."""
    node = cluster.nodes.get(mv.old_primary)
    inst = cluster.instances[mv.instance]
    if node is None or not (node.offline or node.drained) or mv.new_primary == mv.old_primary:
        return False
    return inst.hypervisor in XEN_HYPERVISORS
