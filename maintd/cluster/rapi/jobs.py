"""Ganeti job status as maintd sees it.

``GET /2/jobs/ID`` answers the job object; for an id Ganeti no longer knows
(archived and purged, or never existed) Ganeti 3.0 answers 200 with every
field null, and ``/2/jobs/ID/wait`` answers 404: both become status
``"lost"``, which is final and never counts as success.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

QUEUED = "queued"
WAITING = "waiting"
RUNNING = "running"
CANCELING = "canceling"
CANCELED = "canceled"
SUCCESS = "success"
ERROR = "error"
LOST = "lost"

#: Source of the reason trail entry Ganeti makes of a RAPI write's ``?reason=``.
USER_REASON = "gnt:user"

PENDING_STATUSES = frozenset({QUEUED, WAITING, RUNNING, CANCELING})
FINAL_STATUSES = frozenset({CANCELED, SUCCESS, ERROR, LOST})
KNOWN_STATUSES = PENDING_STATUSES | FINAL_STATUSES


@attrs.frozen
class OpInfo:
    """What maintd reads of one opcode of a job: its id, object, reasons."""

    op_id: str
    #: ``instance_name`` of the opcode ("" when it has none).
    instance: str = ""
    #: The ``gnt:user`` texts of the opcode's reason trail (a RAPI write's ``?reason=``).
    reasons: tuple[str, ...] = ()


@attrs.frozen
class JobResult:
    id: int
    status: str
    #: Error text for failed jobs (from ``opresult``), else "".
    error: str = ""
    #: Ganeti's one-line summary of each opcode (``summary``), e.g.
    #: ``NODE_EVACUATE(node4)``; empty when RAPI gave none (bulk answers).
    summary: tuple[str, ...] = attrs.field(
        default=(), converter=lambda v: tuple(str(s) for s in v), eq=False
    )
    #: The job's opcodes (from ``ops``, where the answer has them); not part
    #: of a result's equality (a job is its id, status and error).
    ops: tuple[OpInfo, ...] = attrs.field(default=(), eq=False)
    #: When Ganeti received the job (seconds since the epoch), if known.
    received: float | None = attrs.field(default=None, eq=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    @classmethod
    def lost(cls, job_id: int, why: str = "job unknown to Ganeti") -> JobResult:
        return cls(id=job_id, status=LOST, error=why)


def format_op_error(result: Any) -> str:
    """Readable text of one failed opcode's result.

    Ganeti encodes errors as ``["OpPrereqError", ["message", "wrong_state"]]``
    (exception class name, then its arguments).
    """
    if isinstance(result, list) and len(result) == 2 and isinstance(result[0], str):
        cls, args = result
        if isinstance(args, list) and args:
            text = str(args[0])
            extra = ", ".join(str(a) for a in args[1:])
            return f"{cls}: {text}" + (f" ({extra})" if extra else "")
        return f"{cls}: {args}"
    return str(result)


def job_error_text(job: Mapping[str, Any]) -> str:
    """Error text of a job object: the results of its failed opcodes."""
    opstatus = job.get("opstatus") or []
    opresult = job.get("opresult") or []
    parts = []
    for i, status in enumerate(opstatus):
        if status in (ERROR, CANCELED) and i < len(opresult):
            parts.append(format_op_error(opresult[i]))
    if not parts and job.get("status") == ERROR:
        parts = [format_op_error(r) for r in opresult if r is not None]
    return "; ".join(parts)


def parse_job(job_id: int, job: Any) -> JobResult:
    """:class:`JobResult` of job ``job_id`` from its ``/2/jobs/ID`` object.

    Raises ``ValueError`` when the object is not a job at all; an all-null
    job (Ganeti's answer for unknown ids) is ``lost``.
    """
    if not isinstance(job, Mapping):
        raise ValueError(f"job {job_id}: expected an object, got {type(job).__name__}")
    status = job.get("status")
    if status is None:
        return JobResult.lost(job_id)
    if status not in KNOWN_STATUSES:
        raise ValueError(f"job {job_id}: unknown status {status!r}")
    error = job_error_text(job) if status in (ERROR, CANCELED) else ""
    raw = job.get("summary")
    summary = tuple(str(s) for s in raw) if isinstance(raw, list) else ()
    return JobResult(
        id=job_id,
        status=status,
        error=error,
        ops=_ops(job.get("ops")),
        received=_timestamp(job.get("received_ts")),
        summary=summary,
    )


def _timestamp(value: Any) -> float | None:
    """Ganeti's ``[seconds, microseconds]`` timestamp; None when absent or malformed."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return value[0] + value[1] / 1e6
    return None


def _ops(ops: Any) -> tuple[OpInfo, ...]:
    """The opcodes of a job object; anything malformed is left out."""
    if not isinstance(ops, list):
        return ()
    out = []
    for op in ops:
        if not isinstance(op, Mapping) or not isinstance(op.get("OP_ID"), str):
            continue
        name = op.get("instance_name")
        trail = op.get("reason")
        reasons = tuple(
            r[1]
            for r in (trail if isinstance(trail, list) else [])
            if isinstance(r, list)
            and len(r) >= 2
            and r[0] == USER_REASON
            and isinstance(r[1], str)
            and r[1]
        )
        out.append(OpInfo(op["OP_ID"], name if isinstance(name, str) else "", reasons))
    return tuple(out)
