"""Round step: harep's tag-driven instance auto-repair (the I/O side).

For every instance (sorted by name) the pure logic in
:mod:`maintd.decide.harep.decide` gives a :class:`~maintd.decide.harep.decide.Decision`;
this step carries it out through RAPI in harep's order:

* a new repair: its job(s) first, in harep's order (one RAPI job per
  operation, see :mod:`maintd.decide.harep`), then ONE ``pending`` tag
  carrying all their job ids, the previous result tag removed in the same
  step (harep's tag-set job, then its tag-delete job).  The tag jobs queue
  behind the repair's instance lock, so they are not waited for: the repair
  and its tag jobs are kept in ``MaintState.harep`` until the tag shows;
* a pending repair whose jobs are final: the ``result`` tag (success or
  failure), then the removal of the repair's other tags once it is set;
* a repair beyond the allowed type: an ``enoperm`` result tag, no job.

Every job id (tag changes included) goes into ``MaintState.jobs`` through
``ctx.commit`` as soon as Ganeti returns it; a repair job that moves a Xen
instance off its offline/drained primary (failover, migrate, recreate-disks
on new nodes) also puts the instance on the evacuated list in that commit.

Never twice: before a new repair is submitted, Ganeti's job queue is read
(once a round, only when a repair is due) for a job whose reason names a
repair of this instance that no tag and no record accounts for (the daemon
stopped between Ganeti accepting the job and the commit); its pending tag is
written instead (:mod:`maintd.decide.harep.recover`).  A repair whose jobs
were committed but whose tag job never ran is tagged from its record.

Only nodes in ``ctx.free_nodes`` (as the step starts) are touched, and
nodes a repair touches or whose iallocator may pick are taken out of it
(balancing runs next).  With ``config.dry_run`` (or when the daemon must
not submit) nothing is written: the decisions go to ``ctx.notes`` and the
log.  A RAPI error on one instance is logged and noted; the others proceed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from maintd.cluster.model import Instance
from maintd.cluster.rapi.errors import RapiError
from maintd.cluster.rapi.jobs import JobResult
from maintd.decide import evacuation
from maintd.decide.harep.decide import (
    Decision,
    Op,
    Status,
    Verdict,
    decide_without_jobs,
    iallocator_for,
    is_own,
    plan_pending,
    tag_state,
)
from maintd.decide.harep.recover import orphaned_repair, repair_reason, with_reinstall_job
from maintd.decide.harep.tags import RepairTag, RepairType, TagError, parse, parse_all

log = Logger()

#: Verdicts that change nothing on the cluster.
_QUIET = {Verdict.HEALTHY}
#: Verdicts that repeat every round while nothing is done: logged at debug
#: (still noted in /1/last-round), so an operator who has not opted in to
#: auto-repair does not get a line per broken instance per round.
_REPEATING = {Verdict.SUSPENDED, Verdict.NOT_ENABLED, Verdict.ENOPERM_KNOWN, Verdict.WAITING}
_WRITES = {Verdict.ENOPERM, Verdict.REPAIR, Verdict.CONTINUE, Verdict.FINISHED}


def reason(instance: str, tag: RepairTag | None = None) -> str:
    """The reason of a harep job (:mod:`maintd.decide.reason`): repair jobs name
    their repair, tag jobs their instance."""
    return repair_reason(instance, tag)


class _Queue:
    """Ganeti's job queue, read at most once a round and only when needed."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.jobs: list[JobResult] | None = None

    async def get(self) -> list[JobResult]:
        if self.jobs is None:
            self.jobs = list(await self.ctx.rapi.jobs_bulk())
        return self.jobs


async def harep_step(ctx: Any) -> None:
    """Check every instance's auto-repair state and act on it."""
    cluster = ctx.cluster
    if cluster is None:
        log.warn("harep: no cluster snapshot this round; skipping")
        return
    await _forget_stale(ctx)
    _report_policy_tags(ctx)
    # Repairs among themselves are ordered by Ganeti's locks (as harep's
    # are); what must not overlap is the other steps' work: every repair is
    # checked against the nodes free when this step starts.
    free = frozenset(ctx.free_nodes)
    ialloc = iallocator_for(cluster, getattr(ctx.config, "iallocator", None))
    queue = _Queue(ctx)
    for inst in sorted(cluster.instances.values(), key=lambda i: i.name):
        try:
            await _instance(ctx, inst, free, ialloc, queue)
        except RapiError as err:
            _rapi_error(ctx, inst.name, err)


def _rapi_error(ctx: Any, name: str, err: Exception) -> None:
    log.error("harep: instance {instance}: {error}", instance=name, error=err)
    _note(ctx, {"instance": name, "harep": "error", "message": f"RAPI: {err}"})


def _report_policy_tags(ctx: Any) -> None:
    """Report malformed auto-repair tags of the cluster and the node groups."""
    objects = [("cluster", ctx.cluster.name, ctx.cluster.tags)]
    objects += [("group", g.name, g.tags) for g in ctx.cluster.groups.values()]
    for kind, name, tags in objects:
        _good, problems = parse_all(tags)
        for problem in problems:
            log.warn(
                "harep: {kind} {name}: ignoring {problem}", kind=kind, name=name, problem=problem
            )
            _note(
                ctx,
                {
                    kind: name,
                    "harep": "malformed-tag",
                    "message": f"{kind} {name}: ignoring {problem}",
                },
            )


def _note(ctx: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """Add a note of this step; returns it (as published, for later additions)."""
    fields = {"step": "harep", **fields}
    if ctx.config.dry_run:
        fields["dry_run"] = True
    ctx.notes.append(fields)
    return fields


def _records(ctx: Any) -> Mapping[str, Any]:
    return getattr(ctx.state, "harep", {}) or {}


def _record(ctx: Any, repair_id: str) -> Mapping[str, Any] | None:
    rec = _records(ctx).get(repair_id)
    return rec if isinstance(rec, Mapping) else None


def _int_list(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(int(v) for v in value if isinstance(v, int) and not isinstance(v, bool))


def _same_repair(tag: str, repair_id: str) -> bool:
    try:
        parsed = parse(tag)
    except TagError:
        return False
    return isinstance(parsed, RepairTag) and parsed.id == repair_id


def _untagged_record(ctx: Any, inst: Instance) -> tuple[str, Mapping[str, Any]] | None:
    """A repair of ``inst`` maintd submitted whose tag the snapshot does not show."""
    for rid, rec in sorted(_records(ctx).items()):
        if not isinstance(rec, Mapping) or rec.get("instance") != inst.name:
            continue
        if not any(_same_repair(t, rid) for t in inst.tags):
            return rid, rec
    return None


def _record_tag(rid: str, rec: Mapping[str, Any]) -> RepairTag | None:
    """The pending tag a record stands for (None for records of older versions)."""
    try:
        rtype = RepairType.from_wire(str(rec.get("type")))
        ts = rec.get("ts")
        if not isinstance(ts, int) or isinstance(ts, bool):
            return None
        return RepairTag(rtype, rid, ts, _int_list(rec.get("jobs")))
    except (TagError, ValueError):
        return None


async def _instance(
    ctx: Any, inst: Instance, free: frozenset[str], ialloc: str, queue: _Queue
) -> None:
    tags: Iterable[str] = inst.tags
    untagged = _untagged_record(ctx, inst)
    if untagged is not None and not ctx.config.dry_run:
        rid, rec = untagged
        fresh = await ctx.rapi.tags("instance", inst.name)
        if any(_same_repair(t, rid) for t in fresh):
            tags = fresh  # the tag landed after the snapshot
        elif await _untagged(ctx, inst, rid, rec, queue):
            return
    state = tag_state(inst.name, tags)
    for problem in state.problems:
        log.warn("harep: {problem}", problem=problem)
        _note(ctx, {"instance": inst.name, "harep": "malformed-tag", "message": problem})
    record: Mapping[str, Any] | None = None
    if state.status is Status.PENDING:
        assert state.current is not None
        record = _record(ctx, state.current.id)
        jobs = state.current.jobs
        if record is not None and len(_int_list(record.get("jobs"))) > len(jobs):
            jobs = _int_list(record.get("jobs"))
        statuses: dict[int, str] = {}
        if jobs:
            seen = await ctx.rapi.wait_jobs(list(jobs), timeout=0)
            statuses = {j: r.status for j, r in seen.items()}
        if await _legacy_reinstall(inst, state.current, jobs, statuses, queue):
            jobs = jobs[:1]  # its reinstall job is still to come
        start = record.get("start") if record is not None else None
        decision = plan_pending(
            ctx.cluster,
            inst,
            state,
            jobs,
            statuses,
            ctx.now,
            free,
            start if isinstance(start, bool) else None,
            ialloc,
        )
    else:
        decision = decide_without_jobs(ctx.cluster, inst, state, ctx.now, free, ialloc)
    await _carry_out(ctx, inst, decision, record, queue)


async def _legacy_reinstall(
    inst: Instance,
    tag: RepairTag,
    jobs: tuple[int, ...],
    statuses: Mapping[int, str],
    queue: _Queue,
) -> bool:
    """An older version's own reinstall stopped after its shutdown job.

    Those reinstalled in three jobs (recreate disks, shut down, reinstall);
    two successful jobs of which the second is a lone shutdown mean the
    reinstall is still to do.
    """
    if (
        tag.type is not RepairType.REINSTALL
        or len(jobs) != 2
        or not is_own(inst.name, tag)
        or any(statuses.get(j) != "success" for j in jobs)
    ):
        return False
    second = [j for j in await queue.get() if j.id == jobs[1]]
    return bool(second) and [op.op_id for op in second[0].ops] == ["OP_INSTANCE_SHUTDOWN"]


async def _untagged(
    ctx: Any, inst: Instance, rid: str, rec: Mapping[str, Any], queue: _Queue
) -> bool:
    """Handle a submitted repair whose pending tag is not on the instance.

    True when the instance is done with for this round.
    """
    name = inst.name
    tag_jobs = _int_list(rec.get("tag_jobs"))
    statuses: dict[int, str] = {}
    if tag_jobs:
        seen = await ctx.rapi.wait_jobs(list(tag_jobs), timeout=0)
        statuses = {j: r.status for j, r in seen.items()}
    running = [
        j for j in tag_jobs if statuses.get(j) not in ("success", "error", "canceled", "lost")
    ]
    if running:
        msg = f"repair {rid} waits for its pending tag job(s) {running}"
        log.debug("harep: instance {instance}: {msg}", instance=name, msg=msg)
        _note(ctx, {"instance": name, "harep": "waiting", "message": msg})
        return True
    if tag_jobs and all(statuses.get(j) == "success" for j in tag_jobs):
        # Tagged, and the tag was removed since: someone else took over.
        log.info(
            "harep: instance {instance}: forgetting repair {rid}: its tag was removed",
            instance=name,
            rid=rid,
        )
        await ctx.commit(attrs.evolve(ctx.state, harep=_without_record(ctx, rid)))
        return False
    tag = _record_tag(rid, rec)
    if tag is None or not tag.jobs or not ctx.submitting:
        return tag is not None
    tag = with_reinstall_job(inst.name, tag, await queue.get())
    jobs: list[int] = []
    msg = f"repair {rid}: writing the pending tag of job(s) {list(tag.jobs)}"
    log.info("harep: instance {instance}: {msg}", instance=name, msg=msg)
    _note(ctx, {"instance": name, "harep": "retag", "message": msg, "jobs": jobs})
    await _write_pending(ctx, name, tag, (), jobs)
    return True


def _log_decision(decision: Decision, dry: bool) -> None:
    prefix = "harep (dry run)" if dry else "harep"
    if decision.verdict in (Verdict.ERROR, Verdict.FAILED):
        emit = log.warn
    elif decision.verdict in _REPEATING:
        emit = log.debug
    else:
        emit = log.info
    emit(
        "{prefix}: instance {instance}: {verdict}: {message}",
        prefix=prefix,
        instance=decision.instance,
        verdict=decision.verdict.value,
        message=decision.message,
    )


async def _carry_out(
    ctx: Any,
    inst: Instance,
    decision: Decision,
    record: Mapping[str, Any] | None,
    queue: _Queue,
) -> None:
    if decision.verdict in _QUIET:
        return
    dry = bool(ctx.config.dry_run)
    _log_decision(decision, dry)
    note = decision.to_json()
    if decision.verdict not in _WRITES:
        _note(ctx, note)
        return
    # Claim the nodes even in dry-run, so the balancing plan sees the same picture.
    ctx.free_nodes.difference_update(decision.touched)
    if dry or not ctx.submitting:
        if not dry:
            note["message"] += " (not submitted: this daemon may not submit jobs now)"
        _note(ctx, note)
        return
    jobs: list[int] = []
    note["jobs"] = jobs
    note = _note(ctx, note)
    if decision.verdict is Verdict.ENOPERM:
        assert decision.add_tag is not None
        await _set_then_remove(
            ctx, inst.name, decision.add_tag.format(), decision.remove_tags, jobs
        )
    elif decision.verdict is Verdict.REPAIR:
        await _start_repair(ctx, inst, decision, jobs, queue, note)
    elif decision.verdict is Verdict.CONTINUE:
        await _continue_repair(ctx, inst, decision, record, jobs, queue)
    else:
        await _finish_repair(ctx, inst, decision, record, jobs)


# --- writes -------------------------------------------------------------------


async def _commit_job(
    ctx: Any,
    job: int,
    jobs: list[int],
    harep: Mapping[str, Mapping[str, Any]] | None = None,
    evacuated: Iterable[str] = (),
) -> None:
    jobs.append(job)
    changes: dict[str, Any] = {"jobs": (*ctx.state.jobs, job)}
    if harep is not None:
        changes["harep"] = harep
    await ctx.commit(evacuation.added(attrs.evolve(ctx.state, **changes), evacuated))


def _evacuates(ctx: Any, name: str, op: Op) -> list[str]:
    """``[name]`` when ``op`` moves this Xen instance off an offline/drained node."""
    return [name] if evacuation.joins_by_method(ctx.cluster, name, op.method) else []


def _with_record(ctx: Any, repair_id: str, **fields: Any) -> dict[str, Mapping[str, Any]]:
    current = dict(_records(ctx))
    rec = dict(current.get(repair_id) or {})
    rec.update(fields)
    current[repair_id] = rec
    return current


def _repair_record(
    ctx: Any, name: str, tag: RepairTag, start: bool
) -> dict[str, Mapping[str, Any]]:
    """The store's harep records with ``tag``'s repair (its jobs, no tag job yet)."""
    return _with_record(
        ctx,
        tag.id,
        instance=name,
        type=tag.type.wire,
        ts=tag.ts,
        jobs=list(tag.jobs),
        tag_jobs=[],
        start=start,
    )


def _without_record(ctx: Any, repair_id: str) -> dict[str, Mapping[str, Any]]:
    current = dict(_records(ctx))
    current.pop(repair_id, None)
    return current


async def _tag_job(ctx: Any, name: str, add: bool, tags: list[str], jobs: list[int]) -> int:
    write = ctx.rapi.add_tags if add else ctx.rapi.remove_tags
    job = int(await write("instance", name, tags, reason=reason(name)))
    await _commit_job(ctx, job, jobs)
    return job


async def _set_then_remove(
    ctx: Any, name: str, add: str, remove: Iterable[str], jobs: list[int]
) -> None:
    """harep's commitChange: set the tag, and once it is set remove the old ones.

    Used where nothing holds the instance lock (the repair's jobs are final),
    so the wait is short; a tag job that fails leaves the old tags in place.
    """
    remove = [t for t in dict.fromkeys(remove) if t != add]
    job = await _tag_job(ctx, name, True, [add], jobs)
    if not remove:
        return
    done = (await ctx.rapi.wait_jobs([job], timeout=ctx.config.job_wait)).get(job)
    if done is None or not done.ok:
        status = done.status if done is not None else "unknown"
        log.error(
            "harep: instance {instance}: tag job {job} is {status}; old tags kept",
            instance=name,
            job=job,
            status=status,
        )
        return
    await _tag_job(ctx, name, False, remove, jobs)


async def _write_pending(
    ctx: Any, name: str, tag: RepairTag, remove: Iterable[str], jobs: list[int]
) -> None:
    """The pending tag with all the repair's jobs, then the removal of the old tags.

    Neither is waited for: both queue behind the repair's instance lock.
    Their job ids go into the repair's record (harep waits for them instead).
    """
    text = tag.format()
    tag_jobs = [await _tag_job(ctx, name, True, [text], jobs)]
    remove = [t for t in dict.fromkeys(remove) if t != text]
    if remove:
        tag_jobs.append(await _tag_job(ctx, name, False, remove, jobs))
    await ctx.commit(attrs.evolve(ctx.state, harep=_with_record(ctx, tag.id, tag_jobs=tag_jobs)))


async def _submit(ctx: Any, name: str, op: Op, tag: RepairTag) -> int:
    method = getattr(ctx.rapi, op.method)
    return int(await method(name, **dict(op.kwargs), reason=reason(name, tag)))


async def _submit_ops(
    ctx: Any, inst: Instance, tag: RepairTag, ops: Iterable[Op], done: tuple[int, ...], start: bool
) -> tuple[int, ...]:
    """Submit ``ops`` in order; every job id committed with the repair's record.

    When a later operation cannot be submitted the jobs already submitted
    are returned (their tag is still written; the rest follows next round).
    """
    name = inst.name
    all_jobs = list(done)
    for op in ops:
        try:
            job = await _submit(ctx, name, op, tag)
        except RapiError:
            if len(all_jobs) == len(done):
                raise
            log.error(
                "harep: instance {instance}: {op} not submitted; the repair's next round submits it",
                instance=name,
                op=op.describe(name),
            )
            break
        all_jobs.append(job)
        harep = _repair_record(ctx, name, attrs.evolve(tag, jobs=all_jobs), start)
        await _commit_job(ctx, job, [], harep, _evacuates(ctx, name, op))
        log.info(
            "harep: instance {instance}: {op} submitted as job {job}",
            instance=name,
            op=op.describe(name),
            job=job,
        )
    return tuple(all_jobs)


async def _start_repair(
    ctx: Any,
    inst: Instance,
    decision: Decision,
    jobs: list[int],
    queue: _Queue,
    note: dict[str, Any],
) -> None:
    """A new repair: its job(s), then one pending tag naming them all."""
    name = inst.name
    pending = decision.add_tag
    assert pending is not None and decision.ops
    orphan = await _orphan(ctx, inst, queue)
    if orphan is not None:
        msg = (
            f"repair {orphan.id} ({orphan.type.wire}) already submitted as job(s) "
            f"{list(orphan.jobs)}; writing its pending tag instead of submitting it again"
        )
        log.warn("harep: instance {instance}: {msg}", instance=name, msg=msg)
        note["message"] += f"; {msg}"
        harep = _repair_record(ctx, name, orphan, inst.running)
        await ctx.commit(attrs.evolve(ctx.state, harep=harep))
        await _write_pending(ctx, name, orphan, decision.remove_tags, jobs)
        return
    submitted = await _submit_ops(ctx, inst, pending, decision.ops, (), inst.running)
    jobs.extend(submitted)
    await _write_pending(
        ctx, name, attrs.evolve(pending, jobs=submitted), decision.remove_tags, jobs
    )


async def _orphan(ctx: Any, inst: Instance, queue: _Queue) -> RepairTag | None:
    """A repair of ``inst`` in Ganeti's queue that no tag and no record knows."""
    known = set(_records(ctx))
    newest = 0
    for text in inst.tags:
        try:
            parsed = parse(text)
        except TagError:
            continue
        if isinstance(parsed, RepairTag):
            known.add(parsed.id)
            newest = max(newest, parsed.ts)
    return orphaned_repair(inst.name, await queue.get(), known, newest)


async def _continue_repair(
    ctx: Any,
    inst: Instance,
    decision: Decision,
    record: Mapping[str, Any] | None,
    jobs: list[int],
    queue: _Queue,
) -> None:
    """maintd's own repair missing some of its jobs: the rest, then its updated tag.

    Never twice: a job already in Ganeti's queue for the missing step is
    taken into the tag instead.
    """
    name = inst.name
    state = tag_state(name, inst.tags)
    current = state.current
    assert current is not None and decision.ops
    done_jobs = _int_list(record.get("jobs")) if record else current.jobs
    if len(done_jobs) < len(current.jobs):
        done_jobs = current.jobs
    found = with_reinstall_job(name, attrs.evolve(current, jobs=done_jobs), await queue.get())
    if len(found.jobs) > len(done_jobs):
        msg = f"job(s) {list(found.jobs[len(done_jobs) :])} already submitted; tagging them"
        log.warn("harep: instance {instance}: {msg}", instance=name, msg=msg)
        start = record.get("start") if record is not None else None
        harep = _repair_record(ctx, name, found, start if isinstance(start, bool) else inst.running)
        await ctx.commit(attrs.evolve(ctx.state, harep=harep))
        await _write_pending(ctx, name, found, state.current_group, jobs)
        return
    start = record.get("start") if record is not None else None
    all_jobs = await _submit_ops(
        ctx,
        inst,
        current,
        decision.ops,
        done_jobs,
        start if isinstance(start, bool) else inst.running,
    )
    jobs.extend(all_jobs[len(done_jobs) :])
    await _write_pending(ctx, name, attrs.evolve(current, jobs=all_jobs), state.current_group, jobs)


async def _finish_repair(
    ctx: Any,
    inst: Instance,
    decision: Decision,
    record: Mapping[str, Any] | None,
    jobs: list[int],
) -> None:
    name = inst.name
    result_tag = decision.add_tag
    assert result_tag is not None
    # Our own queued tag update runs as soon as the repair releases the
    # instance; let it land (bounded) so the fresh tags below are complete.
    if record is not None:
        pending_tag_jobs = _int_list(record.get("tag_jobs"))
        if pending_tag_jobs:
            await ctx.rapi.wait_jobs(list(pending_tag_jobs), timeout=ctx.config.job_wait)
    fresh = await ctx.rapi.tags("instance", name)
    remove = [t for t in fresh if _same_repair(t, result_tag.id) or t in decision.remove_tags]
    await _set_then_remove(ctx, name, result_tag.format(), remove, jobs)
    if record is not None:
        await ctx.commit(attrs.evolve(ctx.state, harep=_without_record(ctx, result_tag.id)))


async def _forget_stale(ctx: Any) -> None:
    """Drop repair records whose instance is gone, or that no longer stand for a repair.

    A record whose instance does not (yet) show the repair's tag is kept:
    its pending tag job may still be queued behind the repair, or was never
    submitted (see :func:`_untagged`).
    """
    harep = getattr(ctx.state, "harep", None)
    if not harep or ctx.config.dry_run:
        return
    keep: dict[str, Mapping[str, Any]] = {}
    for rid, rec in harep.items():
        inst = (
            ctx.cluster.instances.get(rec.get("instance", "")) if isinstance(rec, Mapping) else None
        )
        if inst is not None and (
            any(_same_repair(t, rid) for t in inst.tags) or _record_tag(rid, rec) is not None
        ):
            keep[rid] = rec
            continue
        log.info("harep: forgetting repair {rid}: no longer on its instance", rid=rid)
    if len(keep) != len(harep):
        await ctx.commit(attrs.evolve(ctx.state, harep=keep))
