"""Balancing on the REAL multi-node Ganeti 3.0 sandbox (up-multi.sh, 3 nodes).

All six instances are first migrated to node1.  Then:

* ``ganeti-maintd-plan -m`` (over the real RAPI, certificate pinned) prints
  the same moves, scores and commands as the real ``hbal -L`` run on the
  master over Luxi: our RAPI loader and planner see the cluster as hbal does;
* the daemon, started on node1 with ``--balance`` (the real master vote,
  live ``cpu-avg-load`` from the nodes' real mond, agents on every node),
  migrates instances with real Ganeti jobs until a round finds nothing
  worth moving: every job it submitted is a live migration carrying its
  balance reason and succeeded, every round that moved something lowered
  the score, and ``hbal -L`` afterwards starts from a lower score than
  before.

Skips with a clear message where the sandbox cannot run, fails instead under
``MAINTD_REQUIRE_REAL_GANETI=1``.  Takes a few minutes (the bring-up alone).
"""

from __future__ import annotations

import os
import re
import sys

from maintd.decide.reason import BALANCE, job_reason
from tests.sandbox_multi import RAPI_CERT, RAPI_URL, RAPI_USER, DaemonSandboxTestCase
from tests.tools import skip_or_fail

HBAL = "/usr/lib/ganeti/3.0/usr/bin/hbal"
PLAN = os.path.join(os.path.dirname(sys.executable), "ganeti-maintd-plan")
ROUND = re.compile(r"balance: group \S+: score ([0-9.]+) -> ([0-9.]+), (\d+) move\(s\)")
#: The lines hbal and ganeti-maintd-plan print alike (moves, scores, commands).
COMPARED = re.compile(r"^(Initial score|\s+\d+\. |Cluster score improved|Solution length"
                      r"|\s+gnt-instance )")


def compared(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if COMPARED.match(line)]


def initial_score(hbal_output: str) -> float:
    m = re.search(r"^Initial score: ([0-9.]+)", hbal_output, re.M)
    assert m, hbal_output
    return float(m.group(1))


class RealBalanceTests(DaemonSandboxTestCase):
    sandbox_nodes = 3
    sandbox_instances = 6
    work_prefix = "maintd-sandbox-balance-"

    def hbal(self) -> str:
        return self.sandbox.node(1, HBAL, "-L", "-C").stdout

    def plan(self) -> str:
        return self.sandbox.client(
            PLAN, "-m", RAPI_URL, "--rapi-user", RAPI_USER, "--rapi-password-file",
            self.password, "--rapi-cert", RAPI_CERT, "-C").stdout

    def same_data_reads(self) -> tuple[str, str]:
        """hbal's and our output from reads that saw the same cluster data.

        A node's own and free memory are live figures of the machine (every
        sandbox node shares it); between two reads they move by MiBs, and
        node2 and node3 are otherwise alike, so the best target can flip.
        Reads whose initial scores differ saw different data: read again."""
        for _ in range(15):
            theirs, ours = self.hbal(), self.plan()
            if initial_score(theirs) == initial_score(ours):
                return theirs, ours
        self.fail(f"hbal and our read never saw the same memory figures:\n{ours}\n{theirs}")

    def primaries(self) -> dict[str, str]:
        return {i["name"]: i["pnode"] for i in self.sandbox.rapi("GET", "/2/instances?bulk=1")}

    def rounds(self) -> list[tuple[float, float, int]]:
        try:
            with open(os.path.join(self.work, "daemon1.log"), errors="replace") as f:
                text = f.read()
        except FileNotFoundError:  # not started yet
            return []
        return [(float(a), float(b), int(n)) for a, b, n in ROUND.findall(text)]

    def test_plan_equals_hbal_and_the_daemon_balances(self) -> None:
        if not os.access(HBAL, os.X_OK):
            skip_or_fail(f"{HBAL} not installed (Debian package ganeti-htools-3.0)")
        sb = self.sandbox
        node1 = sb.node_name(1)
        for inst, pnode in sorted(self.primaries().items()):
            if pnode != node1:
                sb.node(1, "gnt-instance", "migrate", "-f", "-n", node1, inst)
        self.assertEqual(set(self.primaries().values()), {node1})

        theirs, ours = self.same_data_reads()
        self.assertEqual(compared(ours), compared(theirs), f"ours:\n{ours}\nhbal:\n{theirs}")
        self.assertGreaterEqual(len([m for m in compared(theirs) if re.match(r"\s+\d+\. ", m)]),
                                2, theirs)
        before = initial_score(theirs)

        for n in (1, 2, 3):
            self.start_agent(n, None)
        daemon, _ = self.start_daemon(1, 5, "--balance")

        def settled() -> bool:
            rounds = self.rounds()
            moved = [i for i, r in enumerate(rounds) if r[2] > 0]
            # a round with nothing to move after the last round that moved
            return bool(moved) and any(r[2] == 0 for r in rounds[moved[-1] + 1:])

        self.until("the daemon balances the cluster and then finds nothing to move", settled,
                   timeout=400)
        sb.stop(daemon)

        jobs = [j for j in sb.rapi("GET", "/2/jobs?bulk=1")
                if (r := job_reason(j["ops"])) is not None and r.kind == BALANCE]
        self.assertTrue(jobs, "no balancing job in Ganeti's queue")
        for job in jobs:
            self.assertEqual(job["status"], "success", job)
            self.assertEqual([op["OP_ID"] for op in job["ops"]], ["OP_INSTANCE_MIGRATE"], job)
            op = job["ops"][0]
            self.assertEqual((op["mode"], op["allow_failover"]), ("live", True), op)
            self.assertEqual(job_reason(job["ops"]).id, op["instance_name"])  # type: ignore[union-attr]
        for ini, fin, n in self.rounds():
            if n:
                self.assertLess(fin, ini, self.rounds())
        self.assertNotEqual(set(self.primaries().values()), {node1})
        after = initial_score(self.hbal())
        self.assertLess(after, before)
