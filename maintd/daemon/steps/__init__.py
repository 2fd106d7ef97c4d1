"""The maintenance round's steps, in order.

``default_steps(config)`` is what the round service runs: replica (once: the
newest replica from the agents) -> reconcile (master check, Ganeti's job
queue) -> pause -> previous jobs -> snapshot -> replica nodes -> pause (the
cluster tag) -> reconcile tags -> cleanup -> collect -> storm breaker ->
evacuated (prune /1/evacuated) -> handle -> harep -> balance.  The harep and
balance steps come from their own modules when they exist.
"""

from __future__ import annotations

from typing import Any

from maintd.daemon.steps.cleanup import cleanup_step
from maintd.daemon.steps.collect import collect_step
from maintd.daemon.steps.evacuated import evacuated_step
from maintd.daemon.steps.guard import pause_step, storm_step
from maintd.daemon.steps.handle import handle_step
from maintd.daemon.steps.jobs import jobs_step
from maintd.daemon.steps.reconcile import reconcile_step, reconcile_tags_step
from maintd.daemon.steps.replica import replica_nodes_step, replica_start_step
from maintd.daemon.steps.snapshot import snapshot_step


def default_steps(config: Any) -> list[Any]:
    steps: list[Any] = [replica_start_step, reconcile_step, pause_step, jobs_step,
                        snapshot_step, replica_nodes_step, pause_step, reconcile_tags_step,
                        cleanup_step, collect_step, storm_step, evacuated_step, handle_step]
    try:
        from maintd.daemon.steps.harep import harep_step  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        pass
    else:
        steps.append(harep_step)
    try:
        from maintd.daemon.steps.balance import balance_step  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        pass
    else:
        steps.append(balance_step)
    return steps
