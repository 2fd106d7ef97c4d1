"""Helpers for tests that use real Ganeti tools (hbal, harep, the RAPI sandbox)."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest

GANETI_BIN = "/usr/lib/ganeti/3.0/usr/bin"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))


def sandbox_dir(script: str) -> str:
    """The ganeti-sandbox scripts directory (holding ``script``):
    ``$MAINTD_SANDBOX_DIR``, else ``../shared/ganeti-sandbox`` next to this
    checkout, else next to the main checkout when this is a git worktree."""
    env = os.environ.get("MAINTD_SANDBOX_DIR")
    if env:
        return env
    candidates = [os.path.join(SHARED, "ganeti-sandbox")]
    try:
        common = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=REPO,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        common = ""
    if common:
        main = os.path.dirname(os.path.abspath(os.path.join(REPO, common)))
        candidates.append(os.path.join(main, "..", "shared", "ganeti-sandbox"))
    for d in candidates:
        if os.path.exists(os.path.join(d, script)):
            return os.path.abspath(d)
    return candidates[0]


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
