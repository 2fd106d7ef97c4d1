"""Split a balancing solution into jobsets (hbal's ``Cluster.splitJobs``).

hbal folds over its move list from the LAST move back to the first: a
move joins the jobset built so far (the one after it) when it touches none
of that jobset's nodes, otherwise it starts a new, earlier jobset.  Moves
of one jobset can therefore run in parallel, and jobsets run one after the
other.  (The daemon's round takes the moves up to the first conflict, going
forward: see ``maintd.daemon.steps.balance.first_jobset_plan``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from maintd.decide.balance.moves import Move
from maintd.decide.balance.planner import PlannedMove


def split_jobs(moves: Sequence[PlannedMove]) -> list[list[PlannedMove]]:
    """Jobsets in execution order, each keeping the solution's move order."""
    backwards: list[list[PlannedMove]] = []
    used: set[str] = set()
    for mv in reversed(moves):
        nodes = set(mv.nodes)
        if backwards and not (nodes & used):
            backwards[-1].append(mv)
            used |= nodes
        else:
            backwards.append([mv])
            used = nodes
    return [list(reversed(js)) for js in reversed(backwards)]


def common_suffix(names: Sequence[str]) -> str:
    """Longest common suffix starting with a dot (htools' ``longestDomain``)."""
    if not names:
        return ""
    first, rest = names[0], names[1:]
    best = ""
    for k in range(len(first)):
        suffix = first[k:]
        if suffix.startswith(".") and all(n.endswith(suffix) for n in rest):
            return suffix
    return best


def _alias(name: str, suffix: str) -> str:
    if not suffix or not name.endswith(suffix):
        return name
    return name[: -len(suffix)]


def _alias_opt(name: str | None, suffix: str) -> str | None:
    return None if name is None else _alias(name, suffix)


def hbal_line(pos: int, mv: PlannedMove, imlen: int, nmlen: int, suffix: str = "") -> str:
    """The solution line hbal prints for a move (``printSolutionLine``), names shortened
    by the cluster's common domain suffix like hbal's aliases."""
    pmlen = 2 * nmlen + 1
    a = aliased(mv, suffix)
    old = a.old_primary + (f":{a.old_secondary}" if a.old_secondary else "")
    new = a.new_primary + (f":{a.new_secondary}" if a.new_secondary else "")
    return f"  {pos:3d}. {a.instance:<{imlen}} {old:<{pmlen}} => {new:<{pmlen}} {mv.score:12.8f} a={short_code(a)}"


def aliased(mv: PlannedMove, suffix: str) -> PlannedMove:
    """``mv`` with every name shortened by the common domain ``suffix`` (hbal's aliases)."""
    return attrs.evolve(
        mv,
        instance=_alias(mv.instance, suffix),
        old_primary=_alias(mv.old_primary, suffix),
        old_secondary=_alias_opt(mv.old_secondary, suffix),
        new_primary=_alias(mv.new_primary, suffix),
        new_secondary=_alias_opt(mv.new_secondary, suffix),
    )


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
