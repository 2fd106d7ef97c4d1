"""kill -9 chaos, small: bench/chaos.py with 10 SIGKILLs (real processes on 127.0.0.1).

The kill moments are random (seeded), so which crash windows are hit varies
with the machine's speed; what must hold does not: every incident completed
and no operation twice in Ganeti's job list.  The 100-kill run is
``bench/chaos.py`` (README: master failover and lost state).
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                      "chaos.py")


class ChaosTests(TestCase):
    timeout = 400

    async def _chaos(self) -> None:
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, [SCRIPT, "--kills", "10", "--primaries", "2", "--seed", "7",
                             "--json"], env=dict(os.environ))
        self.assertTrue(out.strip(), err.decode(errors="replace")[-2000:])
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(result["submitted_twice"], [], result)
        self.assertEqual(result["jobs_without_reason"], [], result)
        self.assertEqual(sorted(n for n, status in result["incidents"].values()),
                         ["n3", "n5", "n7"], result)
        self.assertEqual({s for _, s in result["incidents"].values()}, {"completed"}, result)
        self.assertEqual(result["job_statuses"], {"success": result["jobs"]}, result)
        # drain + 2 migrations + 3 new secondaries + tag, per node
        self.assertEqual(result["jobs"], 3 * 7, result)
        self.assertTrue(result["ok"])
        self.assertEqual(code, 0)

    def test_ten_kills(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._chaos())
