"""Bounded blast radius: the evacuation budget, the storm breaker, the pause.

Pure decisions over plain values (``MaintState``, counts, times); the round
steps (:mod:`maintd.daemon.steps.guard`, :mod:`maintd.daemon.steps.handle`)
do the I/O and the control socket changes the state through the functions
here.  What is durable lives in ``MaintState.guard`` (a JSON object):

``"pause"``           the operator's pause: ``{"reason", "until", "since"}``
                      (``until`` null: until ``resume``); survives restarts
``"tag-pause"``       true when the last snapshot carried the cluster tag
                      ``maintd:pause``
``"breaker"``         ``{"tripped", "released", "reporting", "threshold"}``
``"max-evacuating"``  the budget resolved on the last snapshot's node count

:func:`overview` turns a state into the ``GET /1/overview`` object; the
status page and the Prometheus metrics reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import attrs

from maintd.daemon.state import Action, Incident, MaintState, RepairStatus

#: The cluster tag that pauses the daemon (exact name).
TAG_PAUSE = "maintd:pause"
#: The storm breaker never trips on fewer reporting nodes than this.
STORM_MINIMUM = 2
EVACUATIONS = (Action.EVACUATE, Action.EVACUATE_FAILOVER)


# --------------------------------------------------------------------------
# N or P% limits (--max-evacuating, --storm-threshold)


@attrs.frozen
class Limit:
    """A node count: ``count`` nodes, or ``percent`` % of the cluster's nodes."""

    count: int | None = None
    percent: float | None = None

    def resolve(self, nodes: int, minimum: int = 0) -> int:
        """The number of nodes for a cluster of ``nodes`` nodes (at least ``minimum``).

        A percentage rounds down (10 % of 45 nodes is 4), never below 1 when
        the percentage is above zero and the cluster has nodes.
        """
        if self.count is not None:
            value = self.count
        else:
            assert self.percent is not None
            value = math.floor(nodes * self.percent / 100.0 + 1e-9)
            if self.percent > 0 and nodes > 0:
                value = max(1, value)
        return max(minimum, value)

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        return f"{self.percent:g}%"


def parse_limit(text: Any) -> Limit:
    """``N`` (a whole number >= 0) or ``P%`` (0 < P <= 100); ValueError otherwise."""
    if isinstance(text, Limit):
        return text
    if isinstance(text, bool):
        raise ValueError(f"not a node count or percentage: {text!r}")
    if isinstance(text, int):
        raw = str(text)
    elif isinstance(text, str):
        raw = text.strip()
    else:
        raise ValueError(f"not a node count or percentage: {text!r}")
    if raw.endswith("%"):
        try:
            pct = float(raw[:-1])
        except ValueError:
            raise ValueError(f"not a percentage: {text!r}") from None
        if not 0 < pct <= 100:
            raise ValueError(f"percentage must be above 0 and at most 100: {text!r}")
        return Limit(percent=pct)
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(f"not a node count (N) or percentage (P%): {text!r}") from None
    if count < 0:
        raise ValueError(f"must be at least 0: {text!r}")
    return Limit(count=count)


DEFAULT_MAX_EVACUATING = Limit(count=1)
DEFAULT_STORM_THRESHOLD = Limit(percent=10.0)


# --------------------------------------------------------------------------
# pause


@attrs.frozen
class Pause:
    reason: str
    #: Epoch seconds when the pause ends by itself; None: until resumed.
    until: float | None
    #: "ctl" (ganeti-maintd-ctl pause) or "tag" (the cluster tag maintd:pause).
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "until": self.until, "source": self.source}

    def describe(self) -> str:
        how = "by ganeti-maintd-ctl pause" if self.source == "ctl" else f"by the cluster tag {TAG_PAUSE}"
        return f"paused {how}: {self.reason}"


def ctl_pause(guard: Mapping[str, Any], now: float) -> Pause | None:
    """The operator's pause, unless absent or over at ``now``."""
    raw = guard.get("pause")
    if not isinstance(raw, Mapping):
        return None
    until = raw.get("until")
    if isinstance(until, int | float) and not isinstance(until, bool):
        if now >= until:
            return None
        until = float(until)
    else:
        until = None
    reason = raw.get("reason")
    return Pause(reason=reason if isinstance(reason, str) and reason else "no reason given",
                 until=until, source="ctl")


def current_pause(guard: Mapping[str, Any], now: float) -> Pause | None:
    """The pause in force at ``now``: the operator's first, else the cluster tag's."""
    pause = ctl_pause(guard, now)
    if pause is not None:
        return pause
    if guard.get("tag-pause") is True:
        return Pause(reason=f"cluster tag {TAG_PAUSE} is set", until=None, source="tag")
    return None


def paused(guard: Mapping[str, Any], *, reason: str, duration: float | None,
           now: float) -> dict[str, Any]:
    """``guard`` with the operator's pause set (``duration`` None: until resumed)."""
    if duration is not None and not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"pause duration must be a positive number of seconds: {duration!r}")
    until = None if duration is None else now + duration
    return {**guard, "pause": {"reason": reason or "no reason given", "until": until,
                               "since": now}}


def resumed(guard: Mapping[str, Any]) -> dict[str, Any]:
    """``guard`` without the operator's pause (the tag, if set, still pauses)."""
    return {k: v for k, v in guard.items() if k != "pause"}


def expired(guard: Mapping[str, Any], now: float) -> bool:
    """True when ``guard`` holds an operator pause that is over at ``now``."""
    return isinstance(guard.get("pause"), Mapping) and ctl_pause(guard, now) is None


def with_tags(guard: Mapping[str, Any], cluster_tags: Iterable[str]) -> dict[str, Any]:
    """``guard`` after a snapshot with ``cluster_tags``."""
    return {**guard, "tag-pause": TAG_PAUSE in set(cluster_tags)}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds; ValueError otherwise."""
    raw = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    factor = 1
    if raw and raw[-1] in units:
        factor = units[raw[-1]]
        raw = raw[:-1]
    try:
        value = float(raw) * factor
    except ValueError:
        raise ValueError(f"not a duration (like 90s, 15m, 2h, 1d): {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"duration must be above zero: {text!r}")
    return value


# --------------------------------------------------------------------------
# storm breaker


@attrs.frozen
class Breaker:
    tripped: bool = False
    #: The operator released it (``ganeti-maintd-ctl release``) while the
    #: count was above the threshold; cleared when the count falls under it.
    released: bool = False
    reporting: int = 0
    threshold: int = STORM_MINIMUM

    def to_json(self) -> dict[str, Any]:
        return {"tripped": self.tripped, "released": self.released,
                "reporting": self.reporting, "threshold": self.threshold}

    @classmethod
    def from_guard(cls, guard: Mapping[str, Any]) -> Breaker:
        raw = guard.get("breaker")
        if not isinstance(raw, Mapping):
            return cls()

        def num(key: str, default: int) -> int:
            v = raw.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) else default

        return cls(tripped=raw.get("tripped") is True, released=raw.get("released") is True,
                   reporting=num("reporting", 0), threshold=num("threshold", STORM_MINIMUM))

    def describe(self) -> str:
        return (f"storm breaker tripped: {self.reporting} nodes report a problem, more than "
                f"the threshold of {self.threshold}; no new evacuation or live repair until "
                "the count falls under it or the operator runs ganeti-maintd-ctl release")


def storm_threshold(limit: Limit, nodes: int) -> int:
    return limit.resolve(nodes, minimum=STORM_MINIMUM)


def breaker_after(prev: Breaker, reporting: int, threshold: int) -> Breaker:
    """The breaker after a round where ``reporting`` nodes reported something not ``Ok``.

    It trips when the count is above ``threshold`` (unless the operator
    released it) and resets once the count falls under the threshold; in
    between (count == threshold) it keeps its state.
    """
    if reporting < threshold:
        return Breaker(False, False, reporting, threshold)
    if reporting > threshold:
        return Breaker(not prev.released, prev.released, reporting, threshold)
    return Breaker(prev.tripped, prev.released, reporting, threshold)


STORM_CANCELED = ("reported during a storm (storm breaker tripped), and the node reports Ok "
                  "again: canceled without action")


def storm_leftovers(state: MaintState, ok_nodes: Iterable[str], was_tripped: bool,
                    now: float) -> tuple[MaintState, list[Incident]]:
    """Cancel what a storm left behind: while the breaker held them back (it
    was tripped in the last round), noted evacuations and live repairs whose
    node reports ``Ok`` again are canceled (and so forgotten next round), so a
    fixed diagnose script does not turn into a slow cluster-wide drain."""
    if not was_tripped:
        return state, []
    ok = set(ok_nodes)
    gone: list[Incident] = []
    for inc in state.incidents:
        if (inc.status == RepairStatus.NOTED and inc.node_name in ok
                and (is_evacuation(inc) or inc.action == Action.LIVE_REPAIR)):
            new = inc.changed(now, status=RepairStatus.CANCELED, reason=STORM_CANCELED)
            state = state.with_incident(new)
            gone.append(new)
    return state, gone


def released(guard: Mapping[str, Any]) -> dict[str, Any]:
    """``guard`` after ``ganeti-maintd-ctl release``: not tripped until the count
    has fallen under the threshold and risen above it again."""
    b = Breaker.from_guard(guard)
    return {**guard, "breaker": attrs.evolve(b, tripped=False, released=True).to_json()}


# --------------------------------------------------------------------------
# evacuation budget


def is_evacuation(inc: Incident) -> bool:
    return inc.action in EVACUATIONS


def under_evacuation(incidents: Iterable[Incident]) -> list[Incident]:
    """Evacuations the daemon started and that are not over (one per node)."""
    seen: dict[str, Incident] = {}
    for inc in incidents:
        if is_evacuation(inc) and inc.status == RepairStatus.PENDING:
            seen.setdefault(inc.node_name, inc)
    return list(seen.values())


def severity_key(inc: Incident) -> tuple[int, float, str]:
    """Most severe first, then oldest, then uuid (the order incidents start in)."""
    return (-int(inc.action), inc.ctime, inc.uuid)


def slot_reason(evacuating: int, budget: int) -> str:
    return (f"waiting for an evacuation slot: {evacuating} of at most {budget} node(s) "
            "under evacuation (--max-evacuating)")


def master_reason(node: str) -> str:
    return (f"node {node} is the master node: no job is submitted for it; move the master "
            "role first (gnt-cluster master-failover on another master candidate)")


class _NodePlan(Protocol):
    @property
    def feasible(self) -> bool: ...

    @property
    def takes_slot(self) -> bool: ...

    reason: str | None


class _Planner(Protocol):
    def plan(self, node: str) -> Any: ...

    def takes_slot(self, node: str) -> bool: ...


@attrs.frozen
class Gate:
    """What the guardrails allow this round.

    ``waits``: incident uuid -> why it submits nothing this round (it stays
    as it is, the reason shown).  ``plans``: node name -> the evacuation plan
    of an evacuation that may act (in progress, or admitted to a free slot).
    """

    waits: Mapping[str, str]
    plans: Mapping[str, Any]
    evacuating: int
    budget: int


def round_gate(
    chosen: Iterable[Incident],
    *,
    master: str,
    budget: int,
    breaker: Breaker,
    pause: Pause | None,
    planner: _Planner,
) -> Gate:
    """Apply the budget, the storm breaker, the pause and the master rule.

    ``chosen``: per node the incident that acts this round (most severe).
    Evacuations in progress are planned first (they keep their slot), then
    new ones, most severe and oldest first, while slots are left; one whose
    evacuation cannot be planned stays noted with the planner's reason and
    takes no slot, nor does one that only fails at once (a drained node
    with an instance that cannot leave it).  No new evacuation and no new live repair while the
    breaker is tripped; nothing at all on the master node.
    """
    ordered = sorted(chosen, key=severity_key)
    waits: dict[str, str] = {}
    plans: dict[str, Any] = {}
    running = [i for i in ordered if is_evacuation(i) and i.status == RepairStatus.PENDING]
    for inc in ordered:
        if inc.node_name == master:
            waits[inc.uuid] = master_reason(inc.node_name)
        elif pause is not None and inc.status == RepairStatus.NOTED:
            waits[inc.uuid] = pause.describe()
    for inc in running:
        if inc.uuid not in waits:
            plans[inc.node_name] = planner.plan(inc.node_name)
    slots = budget - len(running)
    started = 0
    for inc in ordered:
        if inc.uuid in waits or inc.status != RepairStatus.NOTED:
            continue
        if breaker.tripped:
            if is_evacuation(inc) or inc.action == Action.LIVE_REPAIR:
                waits[inc.uuid] = breaker.describe()
            continue
        if not is_evacuation(inc):
            continue
        if slots <= 0 and planner.takes_slot(inc.node_name):
            waits[inc.uuid] = slot_reason(len(running) + started, budget)
            continue
        plan = planner.plan(inc.node_name)
        if not plan.feasible:
            waits[inc.uuid] = plan.reason or f"cannot evacuate {inc.node_name}"
            continue
        plans[inc.node_name] = plan
        if plan.takes_slot:
            slots -= 1
            started += 1
    return Gate(waits=waits, plans=plans, evacuating=len(running), budget=budget)


# --------------------------------------------------------------------------
# busy rounds


def work_in_progress(state: MaintState, now: float) -> bool:
    """Whether the next round should come after ``--busy-round-delay``.

    True while something is under way that another round moves forward: a
    pending incident, a harep repair, a balancing move submitted in the last
    round, an evacuation waiting for a slot.  False while paused or when
    only blocked incidents remain (a full cluster, the master, a tripped
    breaker): polling faster would not help them.
    """
    if current_pause(state.guard, now) is not None:
        return False
    if any(i.status == RepairStatus.PENDING for i in state.incidents):
        return True
    if state.harep:
        return True
    notes = state.last_round.get("notes", []) if isinstance(state.last_round, Mapping) else []
    for n in notes if isinstance(notes, list) else []:
        if isinstance(n, Mapping) and n.get("step") == "balance" and n.get("jobs"):
            return True
    return False


# --------------------------------------------------------------------------
# the overview (GET /1/overview, ganeti-maintd-ctl status, metrics)


def overview(
    state: MaintState,
    *,
    now: float,
    max_evacuating: int | None = None,
    next_round: float | None = None,
    version: str = "",
) -> dict[str, Any]:
    """The ``GET /1/overview`` object for ``state`` at ``now``.

    ``max_evacuating``: the budget when the caller knows it (else the one the
    last round resolved, else null).  ``next_round``: epoch seconds of the next
    round's start, null when none is scheduled (a round is running).
    """
    guard = state.guard
    budget = guard.get("max-evacuating")
    if max_evacuating is not None:
        budget = max_evacuating
    breaker = Breaker.from_guard(guard)
    pause = current_pause(guard, now)
    counts = {s.wire: 0 for s in RepairStatus}
    for inc in state.incidents:
        counts[inc.status.wire] += 1
    return {
        "evacuating": len(under_evacuation(state.incidents)),
        "max-evacuating": budget if isinstance(budget, int) else None,
        "storm-breaker": {"tripped": breaker.tripped, "reporting": breaker.reporting,
                          "threshold": breaker.threshold},
        "paused": pause.to_json() if pause is not None else False,
        "incidents": counts,
        "next-round": next_round,
        "version": version,
    }
