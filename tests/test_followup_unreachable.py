"""A round against an unreachable RAPI: one clear error line, then the back-off."""

from __future__ import annotations

import shutil
import socket
import tempfile
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from maintd.cluster.rapi.errors import RapiConnectionError
from maintd.daemon.config import DaemonConfig
from maintd.daemon.tap import makeService

URL = "https://127.0.0.1:1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UnreachableRapiTests(TestCase):
    timeout = 60

    def test_one_error_line_per_failed_round(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._one_line())

    async def _one_line(self) -> None:
        state_dir = tempfile.mkdtemp(prefix="mdu-")  # short: UNIX socket path limit
        self.addCleanup(shutil.rmtree, state_dir, True)
        config = DaemonConfig.for_tests(state_dir=state_dir, port=free_port(), rapi=URL,
                                        rapi_insecure=True, round_delay=3600.0, debug=True)
        daemon = makeService(config, reactor)
        rounds = daemon.rounds
        # quick retries and back-off, so the test does not wait for them
        rounds.failure_delay = 0.05
        rounds.round_fn.rapi.retry_base = 0.01
        events: list[dict[str, Any]]
        with capturedLogs() as events:
            daemon.startService()
            try:
                for _ in range(1000):
                    if rounds.failures >= 2:
                        break
                    await task.deferLater(reactor, 0.01, lambda: None)
            finally:
                await daemon.stopService()
        self.assertGreaterEqual(rounds.failures, 2)
        failed = rounds.failures
        errors = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(errors), failed, errors)
        for line in errors:
            self.assertRegex(line, r"^round \d+ failed after [0-9.]+s: RapiConnectionError: ")
            self.assertIn(f"GET {URL}/2/", line)
            self.assertIn("Connection refused", line)
            self.assertIn("next round in 0.05s", line)
        # the retries are there (-d shows them), at debug level only
        retries = [e for e in events if e.get("log_namespace") == "maintd.cluster.rapi.client"
                   and "retry" in formatEvent(e)]
        self.assertTrue(retries)
        self.assertEqual({e["log_level"] for e in retries}, {LogLevel.debug})
        # nothing at info level between the rounds but the rounds' own lines
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.info
                          and e.get("log_namespace") == "maintd.cluster.rapi.client"], [])
        self.assertEqual(daemon.store.state.last_round["result"], "failed")
        self.assertIn(RapiConnectionError.__name__, daemon.store.state.last_round["error"])
