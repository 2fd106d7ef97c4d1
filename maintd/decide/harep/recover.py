"""Finding a repair's jobs again when its pending tag was never written (pure).

harep's order is: submit the repair job(s), then tag the instance
``pending`` with their ids.  maintd commits every job id to its store as soon
as Ganeti returns it, so a restart normally finds the repair in
``MaintState.harep``; but the daemon can stop after Ganeti accepted a job and
before that commit landed.  Such a job is recognised in ``GET
/2/jobs?bulk=1`` by its reason (:mod:`maintd.decide.reason`): every repair
job carries ``maintd:1:harep:<repair id>:-``, and its opcode names the
instance.  The pending tag is then written for it instead of submitting the
repair a second time.

The tag is rebuilt exactly: its type follows from the opcode, its timestamp
is found again from the repair id (maintd's ids are
``uuid5(instance:type:timestamp)``, and the job was received shortly after
that timestamp).

RAPI's reinstall handler builds its job without the request's reason trail,
so the reinstall job of a reinstall repair is recognised by its shape
instead: the first job after the repair's recreate-disks job whose opcodes
are a shutdown and a reinstall of the same instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs

from maintd.decide.harep.decide import repair_id
from maintd.decide.harep.tags import RepairTag, RepairType
from maintd.decide.reason import HAREP, format_reason, is_uuid, parse_reason


class QueuedOp(Protocol):
    @property
    def op_id(self) -> str: ...
    @property
    def instance(self) -> str: ...
    @property
    def reasons(self) -> Sequence[str]: ...


class QueuedJob(Protocol):
    """A job of Ganeti's queue as read here (``maintd.cluster.rapi.jobs.JobResult``)."""

    @property
    def id(self) -> int: ...
    @property
    def ops(self) -> Sequence[QueuedOp]: ...
    @property
    def received(self) -> float | None: ...


#: The repair type of each opcode maintd's harep repairs start with.
TYPE_OF_OPCODE = {
    "OP_INSTANCE_REPLACE_DISKS": RepairType.FIX_STORAGE,
    "OP_INSTANCE_MIGRATE": RepairType.MIGRATE,
    "OP_INSTANCE_FAILOVER": RepairType.FAILOVER,
    "OP_INSTANCE_RECREATE_DISKS": RepairType.REINSTALL,
}

#: How long before Ganeti received a repair job its repair may have been
#: decided (the round's start): the window searched for the timestamp.
DECIDED_WITHIN = 3 * 3600


def repair_reason(instance: str, tag: RepairTag | None = None) -> str:
    """The reason of a harep job: the repair's id, or the instance for tag jobs."""
    return format_reason(HAREP, tag.id if tag is not None else instance)


def _timestamp(instance: str, rtype: RepairType, rid: str, received: float | None) -> int | None:
    """The timestamp ``rid`` was made from, searched back from ``received``."""
    if received is None:
        return None
    end = int(received) + 60
    for ts in range(end, end - DECIDED_WITHIN - 60, -1):
        if repair_id(instance, rtype, ts) == rid:
            return ts
    return None


@attrs.frozen
class _Found:
    rid: str
    rtype: RepairType
    jobs: tuple[QueuedJob, ...]


def _is_reinstall_job(job: QueuedJob, instance: str) -> bool:
    ids = [op.op_id for op in job.ops]
    return ids[:2] == ["OP_INSTANCE_SHUTDOWN", "OP_INSTANCE_REINSTALL"] and all(
        op.instance == instance for op in job.ops
    )


def _repair_of(job: QueuedJob, instance: str) -> tuple[str, RepairType] | None:
    for op in job.ops:
        if op.instance != instance or op.op_id not in TYPE_OF_OPCODE:
            continue
        for text in op.reasons:
            found = parse_reason(text)
            if found is not None and found.kind == HAREP and is_uuid(found.id):
                return found.id, TYPE_OF_OPCODE[op.op_id]
    return None


def orphaned_repair(
    instance: str,
    jobs: Iterable[QueuedJob],
    known_ids: Iterable[str],
    newer_than: float,
) -> RepairTag | None:
    """The pending tag (with its job ids) of a repair whose tag was never written.

    ``jobs``: Ganeti's job queue; ``known_ids``: repair ids the instance's
    tags or maintd's store already account for; ``newer_than``: the
    timestamp of the instance's newest repair tag (repairs received before
    it were finished or replaced: their jobs only wait to be archived).
    Returns the newest such repair, None if there is none.
    """
    known = set(known_ids)
    queue = sorted(jobs, key=lambda j: j.id)
    found: dict[str, _Found] = {}
    for job in queue:
        mark = _repair_of(job, instance)
        if mark is None or mark[0] in known:
            continue
        if job.received is not None and job.received < newer_than:
            continue
        prev = found.get(mark[0])
        found[mark[0]] = _Found(mark[0], mark[1], (*(prev.jobs if prev else ()), job))
    if not found:
        return None
    newest = max(found.values(), key=lambda f: f.jobs[-1].id)
    first = newest.jobs[0]
    ts = _timestamp(instance, newest.rtype, newest.rid, first.received)
    if ts is None:
        ts = int(first.received) if first.received is not None else int(newer_than)
    tag = RepairTag(newest.rtype, newest.rid, ts, tuple(j.id for j in newest.jobs))
    return with_reinstall_job(instance, tag, queue)


def with_reinstall_job(instance: str, tag: RepairTag, jobs: Iterable[QueuedJob]) -> RepairTag:
    """``tag`` with its reinstall job added when Ganeti has one it does not name.

    A reinstall repair whose tag or record names only its recreate-disks
    job: the daemon stopped after submitting the reinstall job and before
    committing its id, or the reinstall was refused and is still to come.
    """
    if tag.type is not RepairType.REINSTALL or len(tag.jobs) != 1:
        return tag
    after = sorted(
        (j for j in jobs if j.id > tag.jobs[0] and _is_reinstall_job(j, instance)),
        key=lambda j: j.id,
    )
    return attrs.evolve(tag, jobs=(*tag.jobs, after[0].id)) if after else tag
