"""Helpers for tests that use real Ganeti tools (hbal, harep, the RAPI sandbox)."""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SkipTest

GANETI_BIN = "/usr/lib/ganeti/3.0/usr/bin"
SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


def require_real_ganeti() -> bool:
    """True when CI demands the real-Ganeti checks run rather than skip."""
    return os.environ.get("MAINTD_REQUIRE_REAL_GANETI") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test with ``reason``, or fail it where CI requires real Ganeti."""
    if require_real_ganeti():
        raise AssertionError(f"required by MAINTD_REQUIRE_REAL_GANETI=1: {reason}")
    raise SkipTest(reason)


def find_tool(name: str) -> str:
    """Path of a Ganeti htools program (hbal, harep, ...), or skip/fail."""
    path = shutil.which(name) or os.path.join(GANETI_BIN, name)
    if not os.access(path, os.X_OK):
        skip_or_fail(f"{name} not installed (apt-get install ganeti-htools-3.0)")
    return path
