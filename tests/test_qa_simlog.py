"""The simulator's log at start and stop: no per-node Twisted chatter (QA bug F).

Twisted's TCP ports log "<factory> starting on <port>" and "(TCP Port N
Closed)" for every listening socket; the simulator listens once per node.
Those lines must name the node's address, and the daemon's log filter
(without -d) must drop them, leaving one summary line.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from maintd.daemon.logsetup import QuietConnectionsPredicate, level_predicate
from maintd.sim.embed import EmbeddedSimulator, free_port


class SimStartLogTests(TestCase):
    async def _start_and_stop(self) -> tuple[EmbeddedSimulator, list[dict[str, Any]]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        sim = EmbeddedSimulator(reactor, os.path.abspath(self.mktemp()), mond_port=free_port(),
                                clock=task.Clock())
        sim.startService()
        await sim.stopService()
        return sim, events

    def shown(self, events: list[dict[str, Any]], debug: bool) -> list[str]:
        """The lines the daemon's log shows (maintd.daemon.logsetup's filter)."""
        quiet = QuietConnectionsPredicate()
        level = level_predicate(debug)
        out = []
        for e in events:
            if debug or (quiet(e).name != "no" and level(e).name != "no"):
                out.append(formatEvent(e))
        return out

    def test_one_summary_line_per_start(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._check_summary())

    async def _check_summary(self) -> None:
        sim, events = await self._start_and_stop()
        pips = sorted(n.pip for n in sim.cluster.nodes.values())
        port = str(sim.mond_port)
        lines = self.shown(events, debug=False)
        mond_lines = [line for line in lines if port in line]
        self.assertEqual(len(mond_lines), 1, lines)
        self.assertNotIn("_QuietSite", "\n".join(lines))
        # with -d: every node's mond, with its address, at start and stop
        debug = "\n".join(self.shown(events, debug=True))
        for pip in pips:
            self.assertIn(f"{pip} starting on {port}", debug)
            self.assertIn(f"{pip}:{port} closed", debug)
        closed = [e for e in events if f"{pips[0]}:{port} closed" in formatEvent(e)]
        self.assertEqual([e.get("log_level") for e in closed], [LogLevel.debug])

    def test_summary_names_the_addresses(self) -> defer.Deferred[None]:
        async def check() -> None:
            sim, events = await self._start_and_stop()
            [summary] = [line for line in self.shown(events, debug=False)
                         if str(sim.mond_port) in line]
            pips = [n.pip for n in sim.cluster.nodes.values()]
            self.assertIn(pips[0], summary)
            self.assertIn(pips[-1], summary)

        return defer.Deferred.fromCoroutine(check())
