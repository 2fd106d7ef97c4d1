"""Job semantics of the simulated cluster (pure: task.Clock, no network)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from maintd.sim import scenario
from maintd.sim.cluster import SimCluster
from maintd.sim.runtime import Simulation

SCENARIO: dict[str, Any] = {
    "name": "c.test",
    "master": "n1",
    "groups": [{"name": "g1"}, {"name": "g2"}],
    "nodes": [
        {"name": "n1", "group": "g1"},
        {"name": "n2", "group": "g1"},
        {"name": "n3", "group": "g1"},
        {"name": "n4", "group": "g1", "mtotal": 4096, "mnode": 1024},
        {"name": "n5", "group": "g2"},
    ],
    "instances": [
        {"name": "d1", "primary": "n2", "secondary": "n3", "memory": 2048},
        {"name": "d2", "primary": "n3", "secondary": "n2", "memory": 2048},
        {"name": "p1", "primary": "n2", "disk_template": "plain"},
        {"name": "s1", "primary": "n3", "disk_template": "sharedfile", "memory": 8192},
        {"name": "x1", "primary": "n2", "disk_template": "diskless", "admin_state": "down"},
    ],
}


def make_sim(doc: dict[str, Any] | None = None, job_seconds: float = 2.0) -> Simulation:
    loaded = scenario.loads(json.dumps(doc or SCENARIO), "test")
    cluster = SimCluster.from_model(loaded.cluster, (10, 20))
    return Simulation(cluster, task.Clock(), job_seconds=job_seconds, events=list(loaded.events))


def run(sim: Simulation, op: dict[str, Any] | list[dict[str, Any]]) -> Any:
    job_id = sim.jobs.submit(op)
    job = sim.jobs.jobs[job_id]
    assert job.status == "queued"
    sim.clock.advance(0)
    assert job.status == "running"
    sim.clock.advance(sim.jobs.job_seconds)
    return job


def snapshot(sim: Simulation) -> str:
    return json.dumps(sim.cluster.state_json(), sort_keys=True)


class JobLifecycleTests(SynchronousTestCase):
    def test_job_goes_queued_running_success_with_timestamps(self) -> None:
        sim = make_sim()
        job = run(sim, {"OP_ID": "OP_TAGS_SET", "kind": "cluster", "name": None, "tags": ["a"]})
        self.assertEqual(job.status, "success")
        self.assertEqual(job.opstatus, ["success"])
        for ts in (job.received_ts, job.start_ts, job.end_ts):
            self.assertEqual(len(ts), 2)
            self.assertIsInstance(ts[0], int)
        doc = job.to_json()
        self.assertEqual(
            set(doc),
            {
                "id",
                "ops",
                "status",
                "summary",
                "opstatus",
                "received_ts",
                "start_ts",
                "end_ts",
                "oplog",
                "opresult",
            },
        )
        self.assertEqual(doc["summary"], ["TAGS_SET"])
        self.assertEqual(doc["ops"][0]["reason"][-1][0], "gnt:opcode:tags_set")
        self.assertEqual(doc["ops"][0]["reason"][-1][1], f"job={job.id};index=0")

    def test_job_runs_for_job_seconds(self) -> None:
        sim = make_sim(job_seconds=5)
        job_id = sim.jobs.submit({"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "d1"})
        sim.clock.advance(0)
        sim.clock.advance(4.9)
        self.assertEqual(sim.jobs.jobs[job_id].status, "running")
        sim.clock.advance(0.2)
        self.assertEqual(sim.jobs.jobs[job_id].status, "success")

    def test_fail_next_fails_that_many_jobs_and_changes_nothing(self) -> None:
        sim = make_sim()
        before = snapshot(sim)
        sim.set_fail_next(2)
        op = {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "d1"}
        first, second = run(sim, op), run(sim, op)
        self.assertEqual([first.status, second.status], ["error", "error"])
        self.assertEqual(first.opresult[0][0], "OpExecError")
        self.assertEqual(snapshot(sim), before)
        self.assertEqual(run(sim, op).status, "success")


class MigrateTests(SynchronousTestCase):
    def test_drbd_migrate_swaps_primary_and_secondary(self) -> None:
        sim = make_sim()
        job = run(sim, {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "d1", "mode": "live"})
        self.assertEqual(job.status, "success", job.opresult)
        inst = sim.cluster.instances["d1"]
        self.assertEqual((inst.primary, inst.secondaries), ("n3", ["n2"]))
        self.assertIn("d1", sim.cluster.primaries("n3"))
        self.assertIn("d1", sim.cluster.secondaries("n2"))

    def test_migrate_moves_memory_between_nodes(self) -> None:
        sim = make_sim()
        n2, n3 = sim.cluster.mfree("n2"), sim.cluster.mfree("n3")
        run(sim, {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "d1"})
        self.assertEqual(sim.cluster.mfree("n2"), n2 + 2048)
        self.assertEqual(sim.cluster.mfree("n3"), n3 - 2048)

    def test_plain_migrate_refused_like_ganeti_and_cluster_unchanged(self) -> None:
        sim = make_sim()
        before = snapshot(sim)
        job = run(sim, {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "p1"})
        self.assertEqual(job.status, "error")
        self.assertEqual(
            job.opresult,
            [
                [
                    "OpPrereqError",
                    ["Instance's disk layout 'plain' does not allow migrations", "wrong_state"],
                ]
            ],
        )
        self.assertEqual(snapshot(sim), before)

    def test_shared_storage_moves_to_target_node(self) -> None:
        sim = make_sim()
        job = run(sim, {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "s1", "target_node": "n1"})
        self.assertEqual(job.status, "success", job.opresult)
        self.assertEqual(sim.cluster.instances["s1"].primary, "n1")
        self.assertEqual(sim.cluster.instances["s1"].secondaries, [])

    def test_target_without_enough_memory_is_refused(self) -> None:
        sim = make_sim()
        before = snapshot(sim)
        job = run(sim, {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "s1", "target_node": "n4"})
        self.assertEqual(job.status, "error")
        kind, (message, code) = job.opresult[0]
        self.assertEqual((kind, code), ("OpPrereqError", "insufficient_resources"))
        self.assertIn("Not enough memory on node n4", message)
        self.assertEqual(snapshot(sim), before)

    def test_drbd_migrate_to_other_than_secondary_refused(self) -> None:
        sim = make_sim()
        job = run(sim, {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "d1", "target_node": "n1"})
        self.assertEqual(job.status, "error")
        self.assertEqual(sim.cluster.instances["d1"].primary, "n2")

    def test_migrate_to_drained_secondary_refused(self) -> None:
        sim = make_sim()
        sim.cluster.nodes["n3"].drained = True
        job = run(sim, {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "d1"})
        self.assertEqual(job.status, "error")
        self.assertIn("drained node n3", job.opresult[0][1][0])

    def test_failover_of_stopped_diskless_instance(self) -> None:
        sim = make_sim()
        job = run(
            sim, {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "x1", "target_node": "n3"}
        )
        self.assertEqual(job.status, "success", job.opresult)
        self.assertEqual(sim.cluster.instances["x1"].primary, "n3")

    def test_unknown_instance_is_an_error_job(self) -> None:
        sim = make_sim()
        job = run(sim, {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "nope"})
        self.assertEqual(
            job.opresult[0], ["OpPrereqError", ["Instance 'nope' not known", "unknown_entity"]]
        )


class NodeTests(SynchronousTestCase):
    def test_drain_and_undrain(self) -> None:
        sim = make_sim()
        run(sim, {"OP_ID": "OP_NODE_SET_PARAMS", "node_name": "n2", "drained": True})
        self.assertEqual(sim.cluster.nodes["n2"].role, "D")
        run(sim, {"OP_ID": "OP_NODE_SET_PARAMS", "node_name": "n2", "drained": False})
        self.assertEqual(sim.cluster.nodes["n2"].role, "R")

    def test_master_cannot_be_drained(self) -> None:
        sim = make_sim()
        job = run(sim, {"OP_ID": "OP_NODE_SET_PARAMS", "node_name": "n1", "drained": True})
        self.assertEqual(job.status, "error")
        self.assertEqual(
            job.opresult[0],
            [
                "OpPrereqError",
                ["The master role can be changed only via master-failover", "wrong_input"],
            ],
        )
        self.assertFalse(sim.cluster.nodes["n1"].drained)

    def test_evacuate_submits_child_jobs_that_empty_the_node(self) -> None:
        doc = json.loads(json.dumps(SCENARIO))
        doc["instances"] = [i for i in doc["instances"] if i["name"] != "p1"]
        sim = make_sim(doc)
        job = run(sim, {"OP_ID": "OP_NODE_EVACUATE", "node_name": "n2", "mode": "all"})
        self.assertEqual(job.status, "success", job.opresult)
        children = [jid for ok, jid in job.opresult[0]["jobs"]]
        self.assertTrue(children)
        sim.clock.advance(0)
        sim.clock.advance(sim.jobs.job_seconds)
        self.assertEqual({sim.jobs.jobs[c].status for c in children}, {"success"})
        self.assertEqual(sim.cluster.primaries("n2"), [])
        self.assertEqual(sim.cluster.secondaries("n2"), [])

    def test_evacuate_refuses_plain_instances(self) -> None:
        sim = make_sim()
        before = snapshot(sim)
        job = run(sim, {"OP_ID": "OP_NODE_EVACUATE", "node_name": "n2", "mode": "primary-only"})
        self.assertEqual(job.status, "error")
        self.assertIn("p1 (Instances of type plain cannot be relocated)", job.opresult[0][1][0])
        self.assertEqual(snapshot(sim), before)


class InstanceTests(SynchronousTestCase):
    def test_replace_disks_new_secondary(self) -> None:
        sim = make_sim()
        job = run(
            sim,
            {
                "OP_ID": "OP_INSTANCE_REPLACE_DISKS",
                "instance_name": "d1",
                "mode": "replace_new_secondary",
                "remote_node": "n1",
            },
        )
        self.assertEqual(job.status, "success", job.opresult)
        self.assertEqual(sim.cluster.instances["d1"].secondaries, ["n1"])
        self.assertNotIn("d1", sim.cluster.secondaries("n3"))

    def test_replace_disks_onto_primary_refused(self) -> None:
        sim = make_sim()
        job = run(
            sim,
            {
                "OP_ID": "OP_INSTANCE_REPLACE_DISKS",
                "instance_name": "d1",
                "mode": "replace_new_secondary",
                "remote_node": "n2",
            },
        )
        self.assertEqual(job.status, "error")
        self.assertEqual(sim.cluster.instances["d1"].secondaries, ["n3"])

    def test_replace_disks_with_iallocator_picks_node_in_group(self) -> None:
        sim = make_sim()
        run(
            sim,
            {
                "OP_ID": "OP_INSTANCE_REPLACE_DISKS",
                "instance_name": "d1",
                "mode": "replace_new_secondary",
                "iallocator": "hail",
            },
        )
        new = sim.cluster.instances["d1"].secondaries[0]
        self.assertIn(new, {"n1", "n4"})

    def test_reinstall_job_shuts_down_reinstalls_and_starts(self) -> None:
        sim = make_sim()
        job = run(
            sim,
            [
                {"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "d1"},
                {"OP_ID": "OP_INSTANCE_REINSTALL", "instance_name": "d1", "os_type": "debian"},
                {"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "d1"},
            ],
        )
        self.assertEqual(job.opstatus, ["success"] * 3, job.opresult)
        self.assertEqual(sim.cluster.instances["d1"].os, "debian")
        self.assertEqual(sim.cluster.instances["d1"].admin_state, "up")

    def test_reinstall_of_running_instance_refused(self) -> None:
        sim = make_sim()
        job = run(
            sim,
            [
                {"OP_ID": "OP_INSTANCE_REINSTALL", "instance_name": "d1", "os_type": "x"},
                {"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "d1"},
            ],
        )
        self.assertEqual(job.opstatus, ["error", "error"])
        self.assertEqual(sim.cluster.instances["d1"].os, "debootstrap+default")

    def test_recreate_disks_on_new_nodes_when_primary_offline(self) -> None:
        sim = make_sim()
        sim.set_offline("n2", True)
        job = run(
            sim, {"OP_ID": "OP_INSTANCE_RECREATE_DISKS", "instance_name": "p1", "nodes": ["n1"]}
        )
        self.assertEqual(job.status, "success", job.opresult)
        self.assertEqual(sim.cluster.instances["p1"].primary, "n1")

    def test_recreate_disks_by_iallocator_places_drbd_on_two_new_nodes(self) -> None:
        sim = make_sim()
        sim.set_offline("n2", True)
        sim.set_offline("n3", True)
        job = run(
            sim,
            {"OP_ID": "OP_INSTANCE_RECREATE_DISKS", "instance_name": "d1", "iallocator": "hail"},
        )
        # Allowed although d1 is marked up: its old primary is offline (Ganeti's rule).
        self.assertEqual(job.status, "success", job.opresult)
        inst = sim.cluster.instances["d1"]
        nodes = {inst.primary, *inst.secondaries}
        self.assertEqual(len(nodes), 2)
        self.assertLessEqual(nodes, {"n1", "n4"})

    def test_recreate_disks_by_iallocator_needs_the_old_primary_offline_when_up(self) -> None:
        sim = make_sim()
        job = run(
            sim,
            {"OP_ID": "OP_INSTANCE_RECREATE_DISKS", "instance_name": "d1", "iallocator": "hail"},
        )
        self.assertEqual(job.status, "error")
        self.assertIn("marked to be up", str(job.opresult))

    def test_reinstall_job_on_an_offline_primary_changes_nothing(self) -> None:
        # What makes maintd's recreate-disks + reinstall jobs safe in either order.
        sim = make_sim()
        sim.set_offline("n2", True)
        before = snapshot(sim)
        job = run(
            sim,
            [
                {"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "p1"},
                {"OP_ID": "OP_INSTANCE_REINSTALL", "instance_name": "p1"},
                {"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "p1"},
            ],
        )
        self.assertEqual(job.opstatus, ["error"] * 3)
        self.assertIn("offline node n2", str(job.opresult[0]))
        self.assertEqual(snapshot(sim), before)

    def test_startup_stopped_instance(self) -> None:
        sim = make_sim()
        run(sim, {"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "x1"})
        self.assertEqual(sim.cluster.instances["x1"].admin_state, "up")


class TagTests(SynchronousTestCase):
    def test_tags_round_trip_on_every_kind(self) -> None:
        sim = make_sim()
        targets = [("cluster", None), ("node", "n2"), ("instance", "d1"), ("nodegroup", "g1")]
        for kind, name in targets:
            add = run(
                sim,
                {
                    "OP_ID": "OP_TAGS_SET",
                    "kind": kind,
                    "name": name,
                    "tags": ["maintd:repairready:x", "b"],
                },
            )
            self.assertEqual(add.status, "success", add.opresult)
        self.assertEqual(sim.cluster.nodes["n2"].tags, {"maintd:repairready:x", "b"})
        self.assertEqual(sim.cluster.groups["g1"].tags, {"maintd:repairready:x", "b"})
        for kind, name in targets:
            run(sim, {"OP_ID": "OP_TAGS_DEL", "kind": kind, "name": name, "tags": ["b"]})
        self.assertEqual(sim.cluster.tags, {"maintd:repairready:x"})
        self.assertEqual(sim.cluster.instances["d1"].tags, {"maintd:repairready:x"})

    def test_deleting_missing_tag_fails(self) -> None:
        sim = make_sim()
        job = run(sim, {"OP_ID": "OP_TAGS_DEL", "kind": "node", "name": "n2", "tags": ["zz"]})
        self.assertEqual(job.opresult[0][0], "OpPrereqError")
        self.assertIn("'zz' not found", job.opresult[0][1][0])

    def test_invalid_tag_fails_and_adds_nothing(self) -> None:
        sim = make_sim()
        job = run(
            sim, {"OP_ID": "OP_TAGS_SET", "kind": "node", "name": "n2", "tags": ["good", "bad tag"]}
        )
        self.assertEqual(job.opresult[0], ["TagError", ["Tag contains invalid characters"]])
        self.assertEqual(sim.cluster.nodes["n2"].tags, set())

    def test_dry_run_changes_nothing(self) -> None:
        sim = make_sim()
        job = run(
            sim,
            {"OP_ID": "OP_TAGS_SET", "kind": "node", "name": "n2", "tags": ["a"], "dry_run": True},
        )
        self.assertEqual(job.status, "success")
        self.assertEqual(sim.cluster.nodes["n2"].tags, set())


class EventTests(SynchronousTestCase):
    def test_timed_events_run_on_the_clock(self) -> None:
        doc = dict(
            SCENARIO,
            events=[
                {
                    "at": 60,
                    "node": "n3",
                    "diagnose": {"status": "evacuate", "command": "", "details": "disk"},
                },
                {"at": 90, "node": "n4", "offline": True},
            ],
        )
        sim = make_sim(doc)
        sim.start()
        sim.clock.advance(59)
        self.assertEqual(sim.cluster.nodes["n3"].diagnose["status"], "Ok")
        sim.clock.advance(1)
        self.assertEqual(sim.cluster.nodes["n3"].diagnose["status"], "evacuate")
        sim.clock.advance(30)
        self.assertTrue(sim.cluster.nodes["n4"].offline)
        self.assertEqual(sim.faults.mond_mode("n4"), "down")
        sim.stop()
        self.assertEqual(sim.clock.getDelayedCalls(), [])
