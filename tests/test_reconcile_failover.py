"""Master failover and lost state on the simulator, end to end.

Two ganeti-maintd services (makeService, real sockets on 127.0.0.1) share one
simulated cluster: daemon A on n1 evacuates n3; while a migration runs the
master role moves to n2 (``PUT /sim/master``'s effect); A notices (RAPI names
another node as master), stops submitting and exits 11; daemon B on n2 starts
with an empty state dir (or one restored from an older copy), shows the same
incident uuid, adopts the running job and completes the evacuation.  Ganeti's
job list then holds every operation exactly once.
"""

from __future__ import annotations

import collections
import json
import os
import shutil

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from maintd.cluster.voting import EXIT_NOTMASTER
from maintd.daemon.round import RoundStopped
from maintd.daemon.state import TAG_READY, RepairStatus
from maintd.decide.reason import parse_reason
from tests.test_round_e2e import EVACUATE, Daemon, drbd, reasons, scenario

SPEC = scenario(
    [drbd("a1", "n3", "n4"), drbd("a2", "n3", "n5"), drbd("b1", "n2", "n3"),
     drbd("c1", "n6", "n4")],
    {"n3": EVACUATE},
)


def operations(d: Daemon) -> list[tuple[str, str]]:
    """(opcode, object) of every opcode in Ganeti's job list."""
    out = []
    for _, op in d.ops():
        what = op.get("instance_name") or op.get("node_name") or ",".join(op.get("tags", []))
        out.append((op["OP_ID"], str(what)))
    return out


class FailoverTests(TestCase):
    timeout = 240

    async def start(self, d: Daemon) -> Daemon:
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
        await d.start()
        return d

    async def daemon_a(self) -> tuple[Daemon, list[int]]:
        a = Daemon(self, SPEC, job_seconds=1.0, hostname="n1")
        exits: list[int] = []
        await self.start(a)
        a.daemon.mastership.exit = exits.append
        return a, exits

    async def fail_over(self, a: Daemon, exits: list[int]) -> None:
        """Move the master to n2 while a job runs; A's next round stops, exit 11."""
        self.assertTrue(any(j.status in ("queued", "running") for j in a.jobs()),
                        "a migration is running at the failover")
        a.sim.sim.set_master("n2")
        submitted = len(a.jobs())
        with self.assertRaises(RoundStopped):
            await a.round()
        self.assertEqual(exits, [EXIT_NOTMASTER])
        self.assertTrue(a.daemon.mastership.lost)
        self.assertEqual(len(a.jobs()), submitted, "A submitted nothing after the failover")
        self.assertEqual(a.state.last_round["notes"][-1]["reconcile"], "not master")
        await a.stop()

    async def finish_on_b(self, a: Daemon, b: Daemon, uuid: str) -> None:
        await b.rounds_until(lambda: b.state.incident(uuid) is not None
                             and b.state.incident(uuid).status == RepairStatus.COMPLETED,
                             limit=20)
        await b.wait_jobs_done()
        self.assertEqual([i.uuid for i in b.state.incidents], [uuid], "same uuid, no other")
        # every operation once: drain, two migrations, three new secondaries, the tag
        ops = operations(b)
        counts = collections.Counter(ops)
        self.assertEqual([o for o, n in counts.items() if n > 1], [], ops)
        self.assertEqual(sorted(ops), sorted([
            ("OP_NODE_SET_PARAMS", "n3"), ("OP_INSTANCE_MIGRATE", "a1"),
            ("OP_INSTANCE_MIGRATE", "a2"), ("OP_INSTANCE_REPLACE_DISKS", "a1"),
            ("OP_INSTANCE_REPLACE_DISKS", "a2"), ("OP_INSTANCE_REPLACE_DISKS", "b1"),
            ("OP_TAGS_SET", TAG_READY + uuid)]))
        self.assertTrue(all(j.status == "success" for j in b.jobs()))
        for _, op in b.ops():
            self.assertEqual(parse_reason(reasons(op)[0]).id, uuid)  # type: ignore[union-attr]
        done = b.state.incident(uuid)
        assert done is not None
        self.assertEqual(list(done.jobs), [j.id for j in b.jobs()], "all jobs on the incident")
        self.assertEqual(b.inst("a1").primary, "n4")
        self.assertEqual(b.inst("a2").primary, "n5")
        status = await b.http_status()
        self.assertEqual([(s["uuid"], s["repair-status"]) for s in status],
                         [(uuid, "completed")])

    def agents_down(self, a: Daemon) -> None:
        """No agent answers from now on: no replica, no report."""
        for name in a.sim.cluster.nodes:
            a.sim.sim.set_mond(name, "down")

    def test_empty_state_dir_no_agents(self) -> defer.Deferred[None]:
        """Reconciliation alone: B rebuilds the incident from Ganeti's job queue."""
        async def go() -> None:
            a, exits = await self.daemon_a()  # round 1: incident, drain
            uuid = a.incidents("n3")[0].uuid
            await a.round()  # waits for the drain; migrates a1 (running)
            running = [j.id for j in a.jobs() if j.status in ("queued", "running")]
            await self.fail_over(a, exits)
            self.agents_down(a)

            b = Daemon(self, SPEC, sim=a.sim, hostname="n2")
            await self.start(b)  # round 1 on an empty state dir
            inc = b.state.incident(uuid)
            self.assertIsNotNone(inc, "the same incident uuid")
            notes = [n for n in b.state.last_round["notes"] if "reconcile" in n]
            self.assertEqual((notes[0]["reconcile"], notes[0]["incident"]), ("rebuilt", uuid))
            self.assertLessEqual(set(running), set(notes[0]["jobs"]), "running job adopted")
            self.assertEqual(notes[0]["report"], "not reported now")
            self.assertNotIn("replica", json.dumps(b.state.last_round["notes"]))
            await self.finish_on_b(a, b, uuid)

        return defer.Deferred.fromCoroutine(go())

    def test_empty_state_dir_takes_the_replica(self) -> defer.Deferred[None]:
        """With agents: B takes A's last state from them, then reconciles."""
        async def go() -> None:
            a, exits = await self.daemon_a()
            uuid = a.incidents("n3")[0].uuid
            await a.round()  # migrates a1 (running)
            await a.daemon.rounds.round_fn.replica.wait()
            serial = a.state.serial
            await self.fail_over(a, exits)

            b = Daemon(self, SPEC, sim=a.sim, hostname="n2")
            await self.start(b)
            inc = b.state.incident(uuid)
            assert inc is not None
            self.assertEqual(dict(inc.original), EVACUATE)
            taken = [n for n in b.state.last_round["notes"] if n.get("replica") == "taken"]
            self.assertEqual(len(taken), 1)
            self.assertGreaterEqual(taken[0]["serial"], serial)
            self.assertGreater(b.state.serial, taken[0]["serial"])
            await self.finish_on_b(a, b, uuid)

        return defer.Deferred.fromCoroutine(go())

    def test_state_dir_restored_from_an_older_copy(self) -> defer.Deferred[None]:
        async def go() -> None:
            a, exits = await self.daemon_a()  # round 1: incident, drain
            uuid = a.incidents("n3")[0].uuid
            old = os.path.join(a.base, "old-state.json")
            shutil.copy(os.path.join(a.state_dir, "state.json"), old)
            await a.round()  # migrates a1
            await a.round()  # migrates a2 (running)
            await self.fail_over(a, exits)
            self.agents_down(a)

            b = Daemon(self, SPEC, sim=a.sim, hostname="n2")
            os.makedirs(b.state_dir)
            shutil.copy(old, os.path.join(b.state_dir, "state.json"))
            await self.start(b)
            inc = b.state.incident(uuid)
            assert inc is not None
            notes = [n for n in b.state.last_round["notes"] if "reconcile" in n]
            self.assertEqual((notes[0]["reconcile"], notes[0]["incident"]), ("applied", uuid))
            self.assertEqual(len(notes[0]["jobs"]), 2, "both migrations the copy lacks")
            await self.finish_on_b(a, b, uuid)

        return defer.Deferred.fromCoroutine(go())
