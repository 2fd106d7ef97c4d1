"""The process's open-file limit, raised to what the mond client may need.

A round asks up to ``--mond-parallel`` nodes at once, each over its own
connection, and requests without answer give their slot to the next node
(at most ``STALLED_FACTOR`` times as many open in all, see
:mod:`maintd.cluster.mond`), and the agent client keeps up to ``parallel``
idle connections between rounds (:mod:`maintd.cluster.keepalive`); with the
default of 1024 that is more than the usual soft limit of 1024 open files.
"""

from __future__ import annotations

import resource

#: Requests outstanding at most, in units of ``parallel`` (as maintd.cluster.mond).
STALLED_FACTOR = 4
#: Idle agent connections kept between rounds, in units of ``parallel``
#: (as maintd.cluster.agent's pool).
KEPT_FACTOR = 1
#: Files for everything else: RAPI pool, HTTP API clients, store, logs.
HEADROOM = 256


def fds_needed(parallel: int) -> int:
    """Open files the mond and agent clients with ``parallel`` may use, plus headroom."""
    return parallel * (STALLED_FACTOR + KEPT_FACTOR) + HEADROOM


def ensure_fd_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft open-file limit towards ``wanted`` (never above the hard limit).

    Returns (the soft limit now, ``wanted``); the caller warns when the
    first is smaller.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError):
                pass
    return (wanted if soft == resource.RLIM_INFINITY else soft), wanted
