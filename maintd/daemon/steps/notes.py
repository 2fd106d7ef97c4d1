"""Round notes: what was decided (in dry-run: what would have been done)."""

from __future__ import annotations

from typing import Any


def note(ctx: Any, **fields: Any) -> None:
    ctx.notes.append(fields)
