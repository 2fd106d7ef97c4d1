"""The evacuated list end to end: the real daemon, harep and the simulator's monds.

A Xen DRBD instance sits on an offline node; the cluster's harep tag allows
failovers.  Round 1 fails it over: ``/1/evacuated`` lists it.  While the new primary's mond does not answer the list stays;
once it reports the instance's ``xen-cpu-avg-load`` the next round takes it
off.  Balancing is off (the cluster does not enable it), so the pruning is
the round's own, not the balancer's.

Ganeti's ``/2/instances?bulk=1`` has no ``hypervisor`` field (nor does the
simulator's): maintd takes ``/2/info``'s default hypervisor for every
instance, so the cluster here is a Xen one.  The KVM case (never listed) is
covered by ``test_followup_evacuated`` on cluster models.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from maintd.daemon.state import MaintState
from tests.test_round_e2e import Daemon as E2EDaemon

TAG = "ganeti:watcher:autorepair:failover"


def spec() -> dict[str, Any]:
    def drbd(name: str, p: str, s: str, hv: str) -> dict[str, Any]:
        return {"name": name, "primary": p, "secondary": s, "disk_template": "drbd",
                "memory": 1024, "disks": [10240], "hypervisor": hv}

    return {
        "name": "evac.example.com",
        "master": "n1",
        "tags": [TAG],
        "default_hypervisor": "xen-pvm",
        "enabled_hypervisors": ["xen-pvm"],
        "groups": [{"name": "g1"}],
        "nodes": [{"name": f"n{i}", "group": "g1", "offline": i == 2} for i in range(1, 6)],
        "instances": [drbd("xweb", "n2", "n3", "xen-pvm"), drbd("xdb", "n4", "n5", "xen-pvm")],
    }


class Daemon(E2EDaemon):
    """The e2e daemon, also keeping every name any committed state listed."""

    seen_evacuated: set[str]

    def _record(self, state: MaintState) -> None:
        super()._record(state)
        if not hasattr(self, "seen_evacuated"):
            self.seen_evacuated = set()
        self.seen_evacuated.update(state.evacuated)


class EvacuatedListTests(TestCase):
    timeout = 120

    async def evacuated(self, d: Daemon) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        url = f"http://127.0.0.1:{d.http_port}/1/evacuated"
        r = await treq.get(url, pool=pool, timeout=10)
        self.assertEqual(r.code, 200)
        return await r.json()

    def test_failover_lists_xen_until_its_load_shows_up(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._lifecycle())

    async def _lifecycle(self) -> None:
        d = Daemon(self, spec())
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
        await d.start()  # round 1: harep fails xweb over
        kinds = [op["OP_ID"] for _, op in d.ops()]
        self.assertEqual(kinds.count("OP_INSTANCE_FAILOVER"), 1)
        self.assertEqual(d.state.evacuated, ("xweb",))
        self.assertEqual(await self.evacuated(d), ["xweb"])
        # the failovers land; the new primary's mond is down: the list stays
        await d.wait_jobs_done()
        self.assertEqual(d.inst("xweb").primary, "n3")
        d.sim.sim.set_mond("n3", "down")
        await d.round()
        self.assertEqual(await self.evacuated(d), ["xweb"])
        # n3's mond answers again and reports xweb: the next round drops it
        d.sim.sim.set_mond("n3", "up")
        await d.round()
        self.assertEqual(await self.evacuated(d), [])
        self.assertEqual(d.state.evacuated, ())
        # the instance on an online node never joined, in any committed state
        self.assertEqual(d.seen_evacuated, {"xweb"})
