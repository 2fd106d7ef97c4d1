"""Reconciliation steps: Ganeti's job queue and node tags before any submission.

:func:`reconcile_step` runs first in every round (so also at start): it
checks that this host is still the master RAPI names, reads
``GET /2/jobs?bulk=1`` and applies :func:`maintd.decide.reconcile.reconcile_jobs`
(and, for incidents the state lacks, :func:`~maintd.decide.reconcile.rebuild`
with a cluster snapshot and the reports of the nodes concerned) before the
jobs step can submit anything.  :func:`reconcile_tags_step` runs after the
snapshot: incident tags of unknown incidents whose jobs Ganeti no longer
lists, malformed ones reported.  Every change is logged and noted in
``/1/last-round`` (notes with a ``reconcile`` field).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from twisted.logger import Logger

from maintd.cluster.mond import DiagnoseReport
from maintd.cluster.voting import EXIT_NOTMASTER, normalize_name
from maintd.daemon.round import RoundStopped
from maintd.daemon.state import TAG_FAILED, TAG_READY
from maintd.daemon.steps.notes import note
from maintd.decide import evacuation
from maintd.decide import reconcile as R

log = Logger()


async def check_rapi_master(ctx: Any) -> None:
    """Stop (exit 11) when RAPI names another node of the cluster as master.

    A safety net next to the master vote, and the only check where there is
    no vote (``--no-voting``): ``/2/info``'s ``master`` against
    ``--hostname``.  When ``--hostname`` is not a node of the cluster at all
    (a name the cluster does not use), the check cannot decide and is skipped.
    Not with ``--simulate`` (the embedded cluster is this daemon's own).
    """
    ms = getattr(ctx, "mastership", None)
    if ms is None or getattr(ctx.config, "simulate", False) or ms.lost:
        return
    info = await ctx.rapi.info()
    master = info.get("master")
    me = normalize_name(ms.hostname)
    if not isinstance(master, str) or normalize_name(master) == me:
        return
    nodes = {normalize_name(n) for n in await ctx.rapi.node_names()}
    if me not in nodes:
        log.debug("RAPI names {master} as master; {me} is not a node name of the cluster: "
                  "master check skipped", master=master, me=ms.hostname)
        return
    log.critical(
        "{me} is no longer the master: RAPI names {master}; job submission stopped, exiting "
        "with status {status} so the daemon runs on the new master",
        me=ms.hostname, master=master, status=EXIT_NOTMASTER,
    )
    ctx.submitting = False
    ms.mark_lost(None)
    note(ctx, reconcile="not master", master=master, hostname=ms.hostname)
    if ms.exit is not None:
        ms.exit(EXIT_NOTMASTER)
    raise RoundStopped(f"{ms.hostname} is not the master ({master} is)")


def _log_notes(notes: Iterable[Mapping[str, Any]]) -> None:
    for n in notes:
        what = n.get("reconcile")
        if what == "malformed tag":
            log.warn("reconcile: node {node}: {why}; not acted on", node=n.get("node"),
                     why=n.get("why"))
        elif what == "not rebuilt":
            log.info("reconcile: incident {uuid} (jobs {jobs}) not rebuilt: {why}",
                     uuid=n.get("incident"), jobs=n.get("jobs"), why=n.get("why"))
        elif what == "evacuated":
            log.info("reconcile: {instances} join the evacuated list (moved by jobs found in "
                     "Ganeti's queue)", instances=", ".join(n.get("instances") or ()))
        elif what == "adopted":
            log.info("reconcile: adopted unfinished {kind} job {job} ({id}) from Ganeti's queue",
                     kind=n.get("kind"), job=n.get("job"), id=n.get("id"))
        else:
            log.info("reconcile: incident {uuid} on {node} {what} from Ganeti: jobs {jobs}, "
                     "now {status}", uuid=n.get("incident"), node=n.get("node"), what=what,
                     jobs=n.get("jobs") or n.get("from"), status=n.get("repair-status"))


async def _reports(ctx: Any, nodes: Iterable[Any]) -> dict[str, Mapping[str, Any]]:
    """Raw self-diagnose reports of ``nodes`` (online ones that answered),
    from the same source as the collect step (the agents, else mond)."""
    source = ctx.agent if getattr(ctx, "agent", None) is not None else ctx.mond
    ask = [n for n in nodes if not n.offline]
    if source is None or not ask:
        return {}
    got = await source.gather(ask, source.diagnose)
    return {name: r.raw for name, r in got.items() if isinstance(r, DiagnoseReport)}


def _join_evacuated(state: Any, cluster: Any, jobs: Iterable[R.QueueJob],
                    notes: list[dict[str, Any]]) -> Any:
    """Xen instances that jobs found in the queue evacuated join ``/1/evacuated``
    in the reconcile commit (as they would have in the submitting commit)."""
    names = [name for job in evacuation.adopted_moves(state, jobs) for name in job.moved_instances
             if evacuation.joins_adopted(cluster, name, job)]
    new = evacuation.added(state, names)
    if new is not state:
        joined = [n for n in new.evacuated if n not in state.evacuated]
        notes.append({"reconcile": "evacuated", "instances": joined})
    return new


async def reconcile_step(ctx: Any) -> None:
    if ctx.rapi is None:
        return
    await check_rapi_master(ctx)
    docs = await ctx.rapi.jobs_bulk_raw()
    queue, problems = R.parse_queue(docs)
    for problem in problems:
        log.warn("reconcile: RAPI /2/jobs?bulk=1: {problem}; skipped", problem=problem)
    ctx.queue = queue
    res = R.reconcile_jobs(ctx.state, queue, ctx.now)
    state, notes = res.state, list(res.notes)
    cluster = None
    if res.unknown or evacuation.adopted_moves(state, res.new):
        cluster = await ctx.rapi.load_cluster()
    if res.unknown:
        assert cluster is not None
        named = {n for jobs in res.unknown.values() for j in jobs for n in j.nodes}
        if all(any(j.nodes for j in jobs) for jobs in res.unknown.values()):
            nodes = [n for n in cluster.nodes.values() if n.name in named]
        else:  # a node only the digest can find: ask every node
            nodes = list(cluster.nodes.values())
        rebuilt = R.rebuild(state, res.unknown, cluster, await _reports(ctx, nodes), ctx.now)
        state, notes = rebuilt.state, notes + list(rebuilt.notes)
    if cluster is not None:
        state = _join_evacuated(state, cluster, res.new, notes)
    if state != ctx.state:
        await ctx.commit(state)
    _log_notes(notes)
    ctx.notes.extend(notes)


async def reconcile_tags_step(ctx: Any) -> None:
    cluster = ctx.cluster
    if cluster is None:
        return
    tagged = []
    for node in cluster.nodes.values():
        for tag in node.tags:
            if not tag.startswith((TAG_READY, TAG_FAILED)):
                continue
            uuid = tag.split(":", 2)[2]
            if ctx.state.incident(uuid) is None:
                tagged.append(node)
                break
    if not tagged:
        return
    res = R.rebuild_from_tags(ctx.state, cluster, await _reports(ctx, tagged), ctx.now)
    if res.state != ctx.state:
        await ctx.commit(res.state)
    _log_notes(res.notes)
    ctx.notes.extend(res.notes)
