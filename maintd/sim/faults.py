"""Fault injection state: what the RAPI and mond fronts should do wrong next.

Pure bookkeeping; the fronts ask it before answering.  RAPI faults are a
queue of :class:`RapiFault` (each for ``count`` requests, or until cleared);
mond faults are one mode per node.
"""

from __future__ import annotations

from typing import Any

import attrs

MOND_MODES = frozenset({"up", "down", "garbage", "hang", "slow"})
RAPI_KINDS = frozenset({"status", "garbage", "hang"})


class FaultError(ValueError):
    """A fault request that cannot be understood (message names the problem)."""


@attrs.define
class RapiFault:
    kind: str  # status | garbage | hang
    status: int = 500
    count: int | None = 1  # None: until cleared
    message: str = "Simulated failure"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "status": self.status, "count": self.count}


def parse_rapi_fault(body: Any) -> RapiFault | None:
    """``{"status": 503, "count": 1}``, ``"garbage"``, ``"hang"``, ``"clear"``/None.

    Objects may also give ``"kind"`` (status/garbage/hang) and ``"message"``;
    a ``count`` of null means until cleared.
    """
    if body is None or body == "clear":
        return None
    if isinstance(body, str):
        if body not in RAPI_KINDS - {"status"}:
            raise FaultError(f"unknown RAPI fault {body!r} (garbage, hang, clear or an object)")
        return RapiFault(kind=body)
    if not isinstance(body, dict):
        raise FaultError("RAPI fault must be a string or an object")
    kind = body.get("kind", "status")
    if kind not in RAPI_KINDS:
        raise FaultError(f"unknown RAPI fault kind {kind!r}")
    status = body.get("status", 500)
    if not isinstance(status, int) or not 400 <= status <= 599:
        raise FaultError(f"RAPI fault status must be an HTTP error code, not {status!r}")
    count = body.get("count", 1)
    if count is not None and (not isinstance(count, int) or count < 1):
        raise FaultError(f"RAPI fault count must be a positive integer or null, not {count!r}")
    message = body.get("message", "Simulated failure")
    if not isinstance(message, str):
        raise FaultError("RAPI fault message must be a string")
    return RapiFault(kind=kind, status=status, count=count, message=message)


@attrs.define
class Faults:
    rapi: list[RapiFault] = attrs.field(factory=list)
    mond: dict[str, str] = attrs.field(factory=dict)
    #: Seconds a "slow" mond waits before answering.
    mond_delay: float = 5.0

    def add_rapi(self, fault: RapiFault | None) -> None:
        if fault is None:
            self.rapi.clear()
        else:
            self.rapi.append(fault)

    def take_rapi(self) -> RapiFault | None:
        """The fault for the current request, if any (uses up one count)."""
        if not self.rapi:
            return None
        fault = self.rapi[0]
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.rapi.pop(0)
        return fault

    def mond_mode(self, node: str) -> str:
        return self.mond.get(node, "up")

    def to_json(self) -> dict[str, Any]:
        return {
            "rapi": [f.to_json() for f in self.rapi],
            "mond": dict(self.mond),
            "mond_delay": self.mond_delay,
        }
