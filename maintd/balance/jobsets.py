"""Split a balancing solution into jobsets (hbal's ``Cluster.splitJobs``).

Consecutive moves go into the same jobset as long as none of them touches a
node another move of the set touches; the first move that does starts a new
jobset.  Moves of one jobset can therefore run in parallel, and jobsets run
one after the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from maintd.balance.moves import Move
from maintd.balance.planner import PlannedMove


def split_jobs(moves: Sequence[PlannedMove]) -> list[list[PlannedMove]]:
    """Jobsets in execution order, each keeping the solution's move order."""
    jobsets: list[list[PlannedMove]] = []
    used: set[str] = set()
    for mv in moves:
        nodes = set(mv.nodes)
        if jobsets and not (nodes & used):
            jobsets[-1].append(mv)
            used |= nodes
        else:
            jobsets.append([mv])
            used = nodes
    return jobsets


def hbal_line(pos: int, mv: PlannedMove, imlen: int, nmlen: int) -> str:
    """The solution line hbal prints for a move (``printSolutionLine``)."""
    pmlen = 2 * nmlen + 1
    old = mv.old_primary + (f":{mv.old_secondary}" if mv.old_secondary else "")
    new = mv.new_primary + (f":{mv.new_secondary}" if mv.new_secondary else "")
    return f"  {pos:3d}. {mv.instance:<{imlen}} {old:<{pmlen}} => {new:<{pmlen}} {mv.score:12.8f} a={short_code(mv)}"


def short_code(mv: PlannedMove) -> str:
    """hbal's move code: ``f``, ``r:node``, ``f r:node f`` …"""
    c, d = mv.new_primary, mv.new_secondary
    return {
        Move.FAILOVER: "f",
        Move.FAILOVER_TO_ANY: f"fa:{c}",
        Move.FAILOVER_AND_REPLACE: f"f r:{d}",
        Move.REPLACE_SECONDARY: f"r:{d}",
        Move.REPLACE_AND_FAILOVER: f"r:{c} f",
        Move.REPLACE_PRIMARY: f"f r:{c} f",
    }[mv.kind]


def commands(mv: PlannedMove, running: bool = True) -> list[str]:
    """The gnt-instance commands of a move (hbal's ``computeMoves``)."""
    mig = f"{'migrate' if running else 'failover'} -f {mv.instance}"

    def rep(node: str | None) -> str:
        return f"replace-disks -n {node} {mv.instance}"

    c, d = mv.new_primary, mv.new_secondary
    return {
        Move.FAILOVER: [mig],
        Move.FAILOVER_TO_ANY: [f"{'migrate' if running else 'failover'} -f -n {c} {mv.instance}"],
        Move.FAILOVER_AND_REPLACE: [mig, rep(d)],
        Move.REPLACE_SECONDARY: [rep(d)],
        Move.REPLACE_AND_FAILOVER: [rep(c), mig],
        Move.REPLACE_PRIMARY: [mig, rep(c), mig],
    }[mv.kind]


def move_json(mv: PlannedMove) -> dict[str, Any]:
    return {
        "instance": mv.instance,
        "from": mv.old_primary,
        "from_secondary": mv.old_secondary,
        "to": mv.target,
        "new_primary": mv.new_primary,
        "new_secondary": mv.new_secondary,
        "kind": mv.kind.short,
        "score": mv.score,
    }
