"""Control socket operations of the guardrails (issue 17).

=========================================================  ===========================
``{"op": "overview"}``                                     ``{"ok": true, "overview": {...}}``
``{"op": "pause", "reason": TEXT, "for": SECONDS|null}``   ``{"ok": true, "paused": {...}}``
``{"op": "resume"}``                                       ``{"ok": true, "paused": ...}``
``{"op": "release"}``                                      ``{"ok": true, "storm-breaker": {...}}``
=========================================================  ===========================

The pause is written to the durable state (``MaintState.guard``), so it
survives a restart of the daemon; a running round sees it at its next step
(:func:`maintd.daemon.control.track`) and submits nothing more.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger

from maintd.decide import guardrails


def live_context(store: Any) -> Any:
    from maintd.daemon.control import live_context as live

    return live(store)

log = Logger()

OPS = ("overview", "pause", "resume", "release")


def _overview(access: Any) -> dict[str, Any]:
    build = getattr(access, "overview", None)
    state = access.current()
    if build is not None:
        return build(state)  # type: ignore[no-any-return]
    return guardrails.overview(state, now=access.clock.seconds())


def handle(access: Any, op: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """The answer to a guardrail ``op``, or None when ``op`` is not one of them."""
    if op not in OPS:
        return None
    now = access.clock.seconds()
    if op == "overview":
        return {"ok": True, "overview": _overview(access)}
    if op == "pause":
        reason = request.get("reason", "")
        duration = request.get("for")
        if not isinstance(reason, str) or len(reason) > 1000:
            return {"ok": False, "error": "pause 'reason' must be a text of at most 1000 characters"}
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0
        ):
            return {"ok": False, "error": "pause 'for' must be a positive number of seconds"}
        reason = reason.strip() or "paused by the operator"
        new = access.update(lambda s: attrs.evolve(
            s, guard=guardrails.paused(s.guard, reason=reason, duration=duration, now=now)))
        ctx = live_context(access.store)
        if ctx is not None:
            ctx.submitting = False  # a round in progress submits nothing more
        pause = guardrails.current_pause(new.guard, now)
        log.warn("operator paused the daemon: {reason} (until {until})", reason=reason,
                 until="resumed" if duration is None else f"{duration:g}s from now")
        return {"ok": True, "paused": pause.to_json() if pause else False}
    if op == "resume":
        new = access.update(lambda s: attrs.evolve(s, guard=guardrails.resumed(s.guard)))
        pause = guardrails.current_pause(new.guard, now)
        log.warn("operator resumed the daemon")
        if pause is not None:
            log.warn("still paused: {why}", why=pause.describe())
        return {"ok": True, "paused": pause.to_json() if pause else False}
    new = access.update(lambda s: attrs.evolve(s, guard=guardrails.released(s.guard)))
    breaker = guardrails.Breaker.from_guard(new.guard)
    log.warn("operator released the storm breaker ({reporting} nodes reporting, threshold "
             "{threshold})", reporting=breaker.reporting, threshold=breaker.threshold)
    return {"ok": True, "storm-breaker": breaker.to_json()}
