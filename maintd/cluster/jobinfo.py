"""Status and summary of Ganeti jobs, on demand, for operators.

``GET /1/status/UUID`` and ``ganeti-maintd-ctl show`` list an incident's jobs
with their status and Ganeti's summary.  The daemon knows only the job ids;
:class:`JobInfo` asks RAPI (``GET /2/jobs/ID``) when such a request comes,
all of an incident's jobs at once, each bounded by ``timeout`` seconds (5):
an operator's request never hangs on a slow RAPI, and a job RAPI does not
answer for in time shows status ``unknown`` with the reason.

Finished jobs (``success``, ``error``, ``canceled``, ``lost``) never change,
so their answers are cached (the last ``cache_size``, 4096); running and
queued jobs are asked again on every request.  Nothing here runs during
rounds or adds load to RAPI unless an operator asks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from maintd.cluster.rapi.jobs import JobResult

log = Logger()

#: Status shown for a job RAPI could not tell us about.
UNKNOWN = "unknown"
DEFAULT_TIMEOUT = 5.0
#: At most this many jobs (the most recent) are asked for one incident.
MAX_JOBS = 100


def job_json(job: JobResult) -> dict[str, Any]:
    return {"id": job.id, "status": job.status, "summary": list(job.summary), "error": job.error}


def unknown_json(job_id: int, why: str) -> dict[str, Any]:
    return {"id": job_id, "status": UNKNOWN, "summary": [], "error": why}


class JobInfo:
    """Job status and summary from RAPI (``rapi``: a RapiClient, or None)."""

    def __init__(
        self,
        rapi: Any,
        clock: Any,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cache_size: int = 4096,
    ) -> None:
        self.rapi = rapi
        self.clock = clock
        self.timeout = timeout
        self.cache_size = cache_size
        self._final: OrderedDict[int, JobResult] = OrderedDict()

    async def _one(self, job_id: int) -> dict[str, Any]:
        cached = self._final.get(job_id)
        if cached is not None:
            self._final.move_to_end(job_id)
            return job_json(cached)
        if self.rapi is None:
            return unknown_json(job_id, "the daemon has no RAPI client")
        d = defer.Deferred.fromCoroutine(self.rapi.get_job(job_id))
        d.addTimeout(self.timeout, self.clock)
        try:
            job: JobResult = await d
        except defer.TimeoutError:
            return unknown_json(job_id, f"RAPI did not answer within {self.timeout:g}s")
        except Exception as e:  # RapiError and transport failures: say why, per job
            return unknown_json(job_id, f"RAPI: {e}")
        if job.final:
            self._final[job_id] = job
            while len(self._final) > self.cache_size:
                self._final.popitem(last=False)
        return job_json(job)

    async def details(self, job_ids: Iterable[int]) -> list[dict[str, Any]]:
        """One object per job (``id``, ``status``, ``summary``, ``error``),
        in the order given; never raises."""
        ids = list(job_ids)[-MAX_JOBS:]
        if not ids:
            return []
        results = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self._one(j)) for j in ids]
        )
        return list(results)
