"""Step 1: wait (bounded) for the previous round's jobs; fail incidents of failed jobs."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from maintd.cluster.rapi.errors import RapiError
from maintd.daemon.control import track
from maintd.daemon.state import TAG_FAILED
from maintd.daemon.steps.notes import note
from maintd.decide import incidents as I

log = Logger()


async def fail_incident(ctx: Any, uuid: str, reason: str) -> bool:
    """Tag the node ``maintd:repairfailed:<uuid>`` and mark the incident failed.

    Returns False (nothing changed) when the tag job could not be submitted;
    the caller then retries next round.
    """
    inc = ctx.state.incident(uuid)
    if inc is None:
        return True
    if ctx.config.dry_run or not ctx.submitting:
        note(ctx, incident=uuid, node=inc.node_name, action="fail", reason=reason, submitted=False)
        return False
    try:
        jid = await ctx.rapi.add_tags("node", inc.node_name, [TAG_FAILED + uuid], I.job_reason(inc))
    except RapiError as e:
        log.error("incident {uuid} on {node}: cannot tag it failed: {error}",
                  uuid=uuid, node=inc.node_name, error=e)
        return False
    await ctx.commit(I.failed(ctx.state, inc, reason, jid, ctx.now))
    log.warn("incident {uuid} on {node} failed: {reason}", uuid=uuid, node=inc.node_name,
             reason=reason)
    note(ctx, incident=uuid, node=inc.node_name, action="fail", reason=reason, job=jid)
    return True


async def jobs_step(ctx: Any) -> None:
    track(ctx)
    awaited = tuple(ctx.state.jobs)
    if not awaited or ctx.rapi is None:
        return
    results = await ctx.rapi.wait_jobs(list(awaited), timeout=ctx.config.job_wait)
    keep: list[int] = []
    bad: list[tuple[int, str]] = []
    for jid in awaited:
        r = results.get(jid)
        if r is None or not r.final:
            keep.append(jid)
        elif not r.ok:
            detail = f": {r.error}" if r.error else ""
            bad.append((jid, f"job {jid} {r.status}{detail}"))
    # Tag jobs of failed/completed incidents: set, or to be submitted again
    # (by the cleanup step, once the snapshot shows the tag is not there).
    tag_failures: set[int] = set()
    for jid in awaited:
        r = results.get(jid)
        if r is None or not r.final:
            continue
        new_state, tagged = I.tag_job_ended(ctx.state, jid, r.ok)
        if not tagged:
            continue
        await ctx.commit(new_state)
        if not r.ok:
            tag_failures.add(jid)
            why = next(w for j, w in bad if j == jid)
            for inc in tagged:
                log.warn("{why}: tag {tag} of incident {uuid} is not set on {node}; "
                         "tagging it again", why=why, tag=inc.tag, uuid=inc.uuid,
                         node=inc.node_name)
    for jid, why in bad:
        if jid in tag_failures:
            continue
        owners = [i for i in ctx.state.incidents if jid in i.jobs and not i.status.finalized]
        if not owners:
            log.info("{why}; it belongs to no active incident", why=why)
        retry = False
        for inc in owners:
            if not await fail_incident(ctx, inc.uuid, why):
                retry = True
        if retry:
            keep.append(jid)
    if keep:
        log.info("jobs still unfinished after {secs}s: {jobs}", secs=ctx.config.job_wait,
                 jobs=keep)
    new_jobs = [j for j in ctx.state.jobs if j not in awaited or j in keep]
    if tuple(new_jobs) != tuple(ctx.state.jobs):
        import attrs

        await ctx.commit(attrs.evolve(ctx.state, jobs=tuple(new_jobs)))
