"""One incident in detail: ``GET /1/status/UUID`` and ``ganeti-maintd-ctl show``.

The incident's ``/1/status`` object plus ``job-details``: for each of its
jobs (oldest first) ``id``, ``status`` (Ganeti's, or ``unknown`` when RAPI
could not tell within the bound), ``summary`` (Ganeti's opcode summaries,
e.g. ``["NODE_EVACUATE(node4)"]``) and ``error`` (why it failed, or why the
status is unknown; else ``""``).  Job data come from RAPI on demand
(:class:`maintd.cluster.jobinfo.JobInfo`: finished jobs cached, running ones
asked again, 5 s bound).
"""

from __future__ import annotations

from typing import Any

from maintd.cluster.jobinfo import JobInfo, unknown_json
from maintd.daemon.state import Incident


async def incident_details(incident: Incident, jobs: JobInfo | None) -> dict[str, Any]:
    body = incident.to_json()
    if jobs is None:
        body["job-details"] = [unknown_json(j, "job status not available") for j in incident.jobs]
    else:
        body["job-details"] = await jobs.details(incident.jobs)
    return body
