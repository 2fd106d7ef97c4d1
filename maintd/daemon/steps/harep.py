"""Round step: harep's tag-driven instance auto-repair (the I/O side).

For every instance (sorted by name) the pure logic in
:mod:`maintd.decide.harep.decide` gives a :class:`~maintd.decide.harep.decide.Decision`;
this step carries it out through RAPI, in an order that keeps the tags
truthful for harep and for maintd's next round:

* a new repair: the ``pending`` tag (no jobs yet, as the design allows) is
  put on the instance and its tag job must succeed *before* the repair job is
  submitted (the pending tags of all new repairs go first and are waited for
  together, bounded by ``--job-wait``); then the tag is replaced by one listing the repair job (that
  tag job queues behind the repair's instance lock, so maintd also keeps the
  job ids in ``MaintState.harep`` until the repair is finished);
* a pending repair whose jobs are final: the ``result`` tag (success or
  failure) replaces every tag of that repair; maintd's own two-step
  reinstall submits its second job instead;
* a repair beyond the allowed type: an ``enoperm`` result tag, no job.

Every job id (tag changes included) goes into ``MaintState.jobs`` through
``ctx.commit`` as soon as Ganeti returns it; a repair job that moves a Xen
instance off its offline/drained primary (failover, migrate, recreate-disks
on new nodes) also puts the instance on the evacuated list in that commit.  Only nodes in
``ctx.free_nodes`` are touched, and nodes a repair touches are taken out
of it (balancing runs next).  With ``config.dry_run`` (or when the daemon
must not submit) nothing is written: the decisions go to ``ctx.notes`` and
the log.  A RAPI error on one instance is logged and noted; the others
proceed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from maintd.cluster.model import Instance
from maintd.cluster.rapi.errors import RapiError
from maintd.decide import evacuation
from maintd.decide.harep.decide import (
    Decision,
    Op,
    Status,
    Verdict,
    decide_without_jobs,
    plan_pending,
    tag_state,
)
from maintd.decide.harep.tags import RepairTag, TagError, parse, parse_all
from maintd.decide.reason import HAREP, format_reason

log = Logger()

#: Verdicts that change nothing on the cluster.
_QUIET = {Verdict.HEALTHY}
#: Verdicts that repeat every round while nothing is done: logged at debug
#: (still noted in /1/last-round), so an operator who has not opted in to
#: auto-repair does not get a line per broken instance per round.
_REPEATING = {Verdict.SUSPENDED, Verdict.NOT_ENABLED, Verdict.ENOPERM_KNOWN, Verdict.WAITING}
_WRITES = {Verdict.ENOPERM, Verdict.REPAIR, Verdict.CONTINUE, Verdict.FINISHED}


def reason(instance: str) -> str:
    """The harep marker of every job of an instance's repair (:mod:`maintd.decide.reason`)."""
    return format_reason(HAREP, instance)


async def harep_step(ctx: Any) -> None:
    """Check every instance's auto-repair state and act on it."""
    cluster = ctx.cluster
    if cluster is None:
        log.warn("harep: no cluster snapshot this round; skipping")
        return
    await _forget_stale(ctx)
    _report_policy_tags(ctx)
    # New repairs go in two phases: every pending tag first (one wait for
    # all their tag jobs), then the repair jobs.
    starting: list[_Starting] = []
    for inst in sorted(cluster.instances.values(), key=lambda i: i.name):
        try:
            started = await _instance(ctx, inst)
        except RapiError as err:
            _rapi_error(ctx, inst.name, err)
            continue
        if started is not None:
            starting.append(started)
    if not starting:
        return
    tag_jobs = [s.tag_job for s in starting]
    try:
        done = await ctx.rapi.wait_jobs(tag_jobs, timeout=ctx.config.job_wait)
    except RapiError as err:
        for s in starting:
            _rapi_error(ctx, s.inst.name, err)
        return
    for s in starting:
        try:
            await _launch_repair(ctx, s, done.get(s.tag_job))
        except RapiError as err:
            _rapi_error(ctx, s.inst.name, err)


def _rapi_error(ctx: Any, name: str, err: Exception) -> None:
    log.error("harep: instance {instance}: {error}", instance=name, error=err)
    _note(ctx, {"instance": name, "harep": "error", "message": f"RAPI: {err}"})


@attrs.frozen
class _Starting:
    """A new repair whose pending tag job was submitted."""

    inst: Instance
    decision: Decision
    tag_job: int
    jobs: list[int]  # the decision note's job list


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


def _note(ctx: Any, fields: dict[str, Any]) -> None:
    fields = {"step": "harep", **fields}
    if ctx.config.dry_run:
        fields["dry_run"] = True
    ctx.notes.append(fields)


def _record(ctx: Any, repair_id: str) -> Mapping[str, Any] | None:
    harep = getattr(ctx.state, "harep", {}) or {}
    rec = harep.get(repair_id)
    return rec if isinstance(rec, Mapping) else None


def _int_list(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(int(v) for v in value if isinstance(v, int) and not isinstance(v, bool))


async def _instance(ctx: Any, inst: Instance) -> _Starting | None:
    state = tag_state(inst.name, inst.tags)
    for problem in state.problems:
        log.warn("harep: {problem}", problem=problem)
        _note(ctx, {"instance": inst.name, "harep": "malformed-tag", "message": problem})
    free = frozenset(ctx.free_nodes)
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
        )
    else:
        decision = decide_without_jobs(ctx.cluster, inst, state, ctx.now, free)
    return await _carry_out(ctx, inst, decision, record)


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
    ctx: Any, inst: Instance, decision: Decision, record: Mapping[str, Any] | None
) -> _Starting | None:
    if decision.verdict in _QUIET:
        return None
    dry = bool(ctx.config.dry_run)
    _log_decision(decision, dry)
    note = decision.to_json()
    if decision.verdict not in _WRITES:
        _note(ctx, note)
        return None
    # Claim the nodes even in dry-run, so the balancing plan sees the same picture.
    ctx.free_nodes.difference_update(decision.touched)
    if dry or not ctx.submitting:
        if not dry:
            note["message"] += " (not submitted: this daemon may not submit jobs now)"
        _note(ctx, note)
        return None
    jobs: list[int] = []
    note["jobs"] = jobs
    _note(ctx, note)
    if decision.verdict is Verdict.ENOPERM:
        assert decision.add_tag is not None
        await _set_tags(ctx, inst.name, [decision.add_tag.format()], decision.remove_tags, jobs)
    elif decision.verdict is Verdict.REPAIR:
        return await _tag_new_repair(ctx, inst, decision, jobs)
    elif decision.verdict is Verdict.CONTINUE:
        await _continue_repair(ctx, inst, decision, record, jobs)
    else:
        await _finish_repair(ctx, inst, decision, record, jobs)
    return None


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
    current = dict(getattr(ctx.state, "harep", {}) or {})
    rec = dict(current.get(repair_id) or {})
    rec.update(fields)
    current[repair_id] = rec
    return current


def _without_record(ctx: Any, repair_id: str) -> dict[str, Mapping[str, Any]]:
    current = dict(getattr(ctx.state, "harep", {}) or {})
    current.pop(repair_id, None)
    return current


async def _set_tags(
    ctx: Any, name: str, add: Iterable[str], remove: Iterable[str], jobs: list[int]
) -> list[int]:
    """Add, then remove, instance tags; every job committed. Returns the new job ids."""
    new: list[int] = []
    add = list(add)
    remove = [t for t in dict.fromkeys(remove) if t not in add]
    if add:
        job = await ctx.rapi.add_tags("instance", name, add, reason=reason(name))
        await _commit_job(ctx, job, jobs)
        new.append(job)
    if remove:
        job = await ctx.rapi.remove_tags("instance", name, remove, reason=reason(name))
        await _commit_job(ctx, job, jobs)
        new.append(job)
    return new


async def _submit(ctx: Any, name: str, op: Op) -> int:
    method = getattr(ctx.rapi, op.method)
    return int(await method(name, **dict(op.kwargs), reason=reason(name)))


async def _tag_new_repair(
    ctx: Any, inst: Instance, decision: Decision, jobs: list[int]
) -> _Starting:
    """Phase 1 of a new repair: the pending tag (no jobs yet) goes on first."""
    name = inst.name
    placeholder = decision.add_tag
    assert placeholder is not None and decision.ops
    tag_job = await ctx.rapi.add_tags("instance", name, [placeholder.format()], reason=reason(name))
    await _commit_job(ctx, tag_job, jobs)
    if decision.remove_tags:
        job = await ctx.rapi.remove_tags(
            "instance", name, list(decision.remove_tags), reason=reason(name)
        )
        await _commit_job(ctx, job, jobs)
    return _Starting(inst, decision, tag_job, jobs)


async def _launch_repair(ctx: Any, starting: _Starting, result: Any) -> None:
    """Phase 2: the repair job, only once its pending tag is on the instance."""
    inst, decision, tag_job, jobs = (
        starting.inst,
        starting.decision,
        starting.tag_job,
        starting.jobs,
    )
    name = inst.name
    placeholder = decision.add_tag
    assert placeholder is not None and decision.ops
    if result is None or not result.ok:
        status = result.status if result is not None else "unknown"
        log.error(
            "harep: instance {instance}: pending tag job {job} is {status}; repair not started",
            instance=name,
            job=tag_job,
            status=status,
        )
        _note(
            ctx,
            {
                "instance": name,
                "harep": "error",
                "message": f"pending tag job {tag_job} is {status}; repair not started",
            },
        )
        return
    # 2. The repair job; its id is durable at once (with the repair record).
    repair_job = await _submit(ctx, name, decision.ops[0])
    harep = _with_record(
        ctx, placeholder.id, instance=name, jobs=[repair_job], tag_jobs=[], start=inst.running
    )
    await _commit_job(ctx, repair_job, jobs, harep, _evacuates(ctx, name, decision.ops[0]))
    log.info(
        "harep: instance {instance}: {op} submitted as job {job}",
        instance=name,
        op=decision.ops[0].describe(name),
        job=repair_job,
    )
    # 3. The pending tag now names the job (applied once the repair releases the instance).
    updated = attrs.evolve(placeholder, jobs=(repair_job,))
    tag_jobs = await _set_tags(ctx, name, [updated.format()], [placeholder.format()], jobs)
    await ctx.commit(
        attrs.evolve(ctx.state, harep=_with_record(ctx, placeholder.id, tag_jobs=tag_jobs))
    )


async def _continue_repair(
    ctx: Any,
    inst: Instance,
    decision: Decision,
    record: Mapping[str, Any] | None,
    jobs: list[int],
) -> None:
    name = inst.name
    state = tag_state(name, inst.tags)
    current = state.current
    assert current is not None and decision.ops
    done_jobs = _int_list(record.get("jobs")) if record else current.jobs
    if len(done_jobs) < len(current.jobs):
        done_jobs = current.jobs
    job = await _submit(ctx, name, decision.ops[0])
    all_jobs = (*done_jobs, job)
    start = record.get("start") if record is not None else None
    harep = _with_record(
        ctx,
        current.id,
        instance=name,
        jobs=list(all_jobs),
        tag_jobs=[],
        start=start if isinstance(start, bool) else inst.running,
    )
    await _commit_job(ctx, job, jobs, harep, _evacuates(ctx, name, decision.ops[0]))
    updated: RepairTag = attrs.evolve(current, jobs=all_jobs)
    tag_jobs = await _set_tags(ctx, name, [updated.format()], state.current_group, jobs)
    await ctx.commit(
        attrs.evolve(ctx.state, harep=_with_record(ctx, current.id, tag_jobs=tag_jobs))
    )


def _same_repair(tag: str, repair_id: str) -> bool:
    try:
        parsed = parse(tag)
    except TagError:
        return False
    return isinstance(parsed, RepairTag) and parsed.id == repair_id


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
    await _set_tags(ctx, name, [result_tag.format()], remove, jobs)
    if record is not None:
        await ctx.commit(attrs.evolve(ctx.state, harep=_without_record(ctx, result_tag.id)))


async def _forget_stale(ctx: Any) -> None:
    """Drop repair records whose instance no longer carries that repair's tags.

    Runs before the instances are handled: the snapshot then already shows
    the pending tags written (and waited for) in earlier rounds.
    """
    harep = getattr(ctx.state, "harep", None)
    if not harep or ctx.config.dry_run:
        return
    keep: dict[str, Mapping[str, Any]] = {}
    for rid, rec in harep.items():
        inst = (
            ctx.cluster.instances.get(rec.get("instance", "")) if isinstance(rec, Mapping) else None
        )
        if inst is not None and any(_same_repair(t, rid) for t in inst.tags):
            keep[rid] = rec
            continue
        log.info("harep: forgetting repair {rid}: no longer on its instance", rid=rid)
    if len(keep) != len(harep):
        await ctx.commit(attrs.evolve(ctx.state, harep=keep))
