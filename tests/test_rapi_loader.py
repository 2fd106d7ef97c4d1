"""maintd.cluster.rapi.loader: real Ganeti 3.0 bulk answers -> the cluster model."""

from __future__ import annotations

import copy
from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster import model
from maintd.cluster.rapi.loader import build_cluster
from tests.test_rapi_helpers import sample


def real() -> tuple[Any, Any, Any, Any]:
    return (
        sample("info.json"),
        sample("groups-bulk.json"),
        sample("nodes-bulk.json"),
        sample("instances-bulk.json"),
    )


class RealSampleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = build_cluster(*real())

    def test_cluster(self) -> None:
        c = self.cluster
        self.assertEqual(c.name, "cluster.sandbox.test")
        self.assertEqual(c.master, "node1.sandbox.test")
        self.assertEqual(c.default_hypervisor, "fake")
        # What harep's repairs name unless --iallocator says otherwise.
        self.assertEqual(c.default_iallocator, "hail")
        self.assertEqual(c.enabled_hypervisors, ("fake",))
        self.assertEqual(c.ipolicy["vcpu-ratio"], 4)
        # Ganeti 3.0 has no maintenance settings
        self.assertIsNone(c.maint_round_delay)
        self.assertIsNone(c.maint_balance)
        self.assertIsNone(c.maint_balance_threshold)
        self.assertEqual(c.skipped, ())

    def test_group(self) -> None:
        g = self.cluster.groups["default"]
        self.assertEqual(g.uuid, "3c93fd26-fd6a-41a4-967f-08fa211e61e6")
        self.assertEqual(g.nodes, ("node1.sandbox.test",))
        self.assertEqual(g.alloc_policy, "preferred")
        self.assertEqual(g.ipolicy["spindle-ratio"], 32)

    def test_node(self) -> None:
        n = self.cluster.nodes["node1.sandbox.test"]
        self.assertEqual(n.group, "default")  # group name, from group.uuid
        self.assertTrue(n.master)
        self.assertTrue(n.master_candidate)
        self.assertFalse(n.drained or n.offline)
        self.assertEqual((n.mtotal, n.mnode, n.mfree), (24105, 166, 19460))
        self.assertEqual((n.dtotal, n.dfree), (258019, 81601))
        self.assertEqual((n.ctotal, n.cnos), (2, 2))
        self.assertEqual(n.pip, "198.18.0.1")
        # sptotal/spfree are null in the sample: ndparams spindle_count
        self.assertEqual((n.spindles_total, n.spindles_free), (1, 1))
        self.assertEqual(n.cpu_speed, 1.0)
        self.assertEqual(len(n.primaries), 6)
        self.assertEqual(n.secondaries, ())

    def test_instances(self) -> None:
        i2 = self.cluster.instances["inst2.sandbox.test"]
        self.assertEqual(i2.primary, "node1.sandbox.test")
        self.assertEqual(i2.disk_template, "diskless")
        self.assertEqual((i2.memory, i2.minmem, i2.vcpus), (512, 512, 2))
        self.assertEqual(i2.hypervisor, "fake")  # from the cluster default
        self.assertEqual(i2.admin_state, "up")
        self.assertTrue(i2.oper_state)
        self.assertEqual(i2.os, "noop")
        i5 = self.cluster.instances["inst5.sandbox.test"]
        self.assertEqual(i5.disk_template, "file")
        self.assertEqual(i5.disk_sizes, (1024,))
        self.assertEqual(i5.spindles, (None,))
        self.assertEqual(i5.disk, 1024)

    def test_snapshot_round_trip(self) -> None:
        doc = model.to_json(self.cluster)
        self.assertEqual(model.from_json(doc), self.cluster)


class ShapeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_level") == LogLevel.warn]

    def test_bad_instance_skipped_rest_loaded(self) -> None:
        info, groups, nodes, instances = real()
        instances[2]["beparams"]["maxmem"] = "lots"
        instances[4] = "garbage"
        c = build_cluster(info, groups, nodes, instances)
        self.assertEqual(len(c.instances), 4)
        self.assertNotIn("inst3.sandbox.test", c.instances)
        names = [(k, n) for k, n, _ in c.skipped]
        self.assertEqual(names, [("instance", "inst3.sandbox.test"), ("instance", "<instance #4>")])
        self.assertIn("maxmem", c.skipped[0][2])
        # skipped instances do not stay listed on their node
        self.assertNotIn("inst3.sandbox.test", c.nodes["node1.sandbox.test"].primaries)
        self.assertEqual(len(c.nodes["node1.sandbox.test"].primaries), 4)
        logged = [e["name"] for e in self.warnings()]
        self.assertIn("inst3.sandbox.test", logged)

    def test_node_in_unknown_group_and_its_instances_skipped(self) -> None:
        info, groups, nodes, instances = real()
        n2 = copy.deepcopy(nodes[0])
        n2.update(name="node2", uuid="u2", role="R", pinst_list=[])
        n2["group.uuid"] = "no-such-group"
        nodes.append(n2)
        i7 = copy.deepcopy(instances[0])
        i7.update(name="inst7", pnode="node2")
        instances.append(i7)
        c = build_cluster(info, groups, nodes, instances)
        self.assertEqual(set(c.nodes), {"node1.sandbox.test"})
        kinds = {(k, n) for k, n, _ in c.skipped}
        self.assertEqual(kinds, {("node", "node2"), ("instance", "inst7")})

    def test_offline_node_null_figures(self) -> None:
        info, groups, nodes, instances = real()
        n2 = copy.deepcopy(nodes[0])
        n2.update(name="node2", uuid="u2", role="O", offline=True, master_candidate=False)
        for k in ("mtotal", "mnode", "mfree", "dtotal", "dfree", "ctotal", "cnos"):
            n2[k] = None
        nodes.append(n2)
        c = build_cluster(info, groups, nodes, instances)
        node = c.nodes["node2"]
        self.assertTrue(node.offline)
        self.assertFalse(node.master)
        self.assertEqual((node.mtotal, node.dfree), (0, 0))
        self.assertFalse(node.usable)
        self.assertEqual(c.groups["default"].nodes, ("node1.sandbox.test", "node2"))

    def test_drbd_secondary_and_hypervisor_field(self) -> None:
        info, groups, nodes, instances = real()
        n2 = copy.deepcopy(nodes[0])
        n2.update(name="node2", uuid="u2", role="R", sptotal=4, spfree=3)
        nodes.append(n2)
        instances[0].update(disk_template="drbd", snodes=["node2"], hypervisor="kvm")
        instances[0]["disk.sizes"] = [2048, 1024]
        instances[0]["disk.spindles"] = [1, 1]
        del instances[1]["beparams"]["maxmem"]
        c = build_cluster(info, groups, nodes, instances)
        i1 = c.instances["inst1.sandbox.test"]
        self.assertEqual(i1.secondaries, ("node2",))
        self.assertEqual(i1.hypervisor, "kvm")
        self.assertEqual(i1.disk, 3072)
        self.assertEqual(c.nodes["node2"].secondaries, ("inst1.sandbox.test",))
        self.assertEqual((c.nodes["node2"].spindles_total, c.nodes["node2"].spindles_free), (4, 3))
        # memory falls back to beparams "memory" when maxmem is missing
        self.assertEqual(c.instances["inst2.sandbox.test"].memory, 512)

    def test_maintenance_fields_when_present(self) -> None:
        info, groups, nodes, instances = real()
        info.update(maint_round_delay=600, maint_balance=True, maint_balance_threshold=0.25)
        c = build_cluster(info, groups, nodes, instances)
        self.assertEqual(
            (c.maint_round_delay, c.maint_balance, c.maint_balance_threshold), (600, True, 0.25)
        )

    def test_secondary_on_unknown_node(self) -> None:
        info, groups, nodes, instances = real()
        instances[0].update(disk_template="drbd", snodes=["ghost"])
        c = build_cluster(info, groups, nodes, instances)
        self.assertEqual(c.skipped[0][:2], ("instance", "inst1.sandbox.test"))
        self.assertIn("ghost", c.skipped[0][2])

    def test_duplicate_and_bad_group(self) -> None:
        info, groups, nodes, instances = real()
        groups.append(copy.deepcopy(groups[0]))
        groups.append({"name": "g2"})  # no uuid
        c = build_cluster(info, groups, nodes, instances)
        self.assertEqual(set(c.groups), {"default"})
        self.assertEqual([s[:2] for s in c.skipped], [("group", "default"), ("group", "g2")])

    def test_unusable_info_or_bulk_fails_whole_load(self) -> None:
        info, groups, nodes, instances = real()
        self.assertRaises(ValueError, build_cluster, [], groups, nodes, instances)
        self.assertRaises(ValueError, build_cluster, {"name": "x"}, groups, nodes, instances)
        e = self.assertRaises(ValueError, build_cluster, info, groups, {"a": 1}, instances)
        self.assertIn("/2/nodes", str(e))


class FastPathTests(SynchronousTestCase):
    """The loader's fast path gives exactly what the checked path gives."""

    def test_same_instances(self) -> None:
        from maintd.cluster.rapi.loader import _instance_checked, _instance_fast

        variants = sample("instances-bulk.json")
        drbd = copy.deepcopy(variants[0])
        drbd.update(disk_template="drbd", snodes=["n2"], hypervisor="kvm", tags=["a", "b"])
        drbd["disk.sizes"] = [1, 2]
        drbd["disk.spindles"] = [1, None]
        down = copy.deepcopy(variants[1])
        down.update(admin_state="down", oper_state=False, status="ADMIN_down")
        for raw in [*variants, drbd, down]:
            fast = _instance_fast(raw, "fake")
            self.assertIsNotNone(fast, raw["name"])
            self.assertEqual(fast, _instance_checked(raw, "fake"))

    def test_irregular_objects_leave_the_fast_path(self) -> None:
        from maintd.cluster.rapi.loader import _instance_fast

        base = sample("instances-bulk.json")[0]
        for change in (
            {"snodes": None},
            {"oper_state": None},
            {"beparams": {"memory": 128}},
            {"disk.spindles": None},
            {"tags": ["ok", 3]},
        ):
            self.assertIsNone(_instance_fast(dict(base, **change), "fake"), change)
