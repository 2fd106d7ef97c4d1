"""Loading simulated clusters: scenario JSON/YAML, snapshots, the demo; users files."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import yaml
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster import model
from maintd.sim import scenario
from maintd.sim.cluster import SimCluster, pip_for
from maintd.sim.users import User, UsersFileError, parse_basic_auth, parse_users

from .test_sim_jobs import SCENARIO


class ScenarioTests(SynchronousTestCase):
    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.mktemp() + "-" + name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_demo_has_groups_drbd_plain_and_an_evacuate_event(self) -> None:
        demo = scenario.load(None)
        c = demo.cluster
        self.assertGreaterEqual(len(c.groups), 3)
        self.assertGreaterEqual(len(c.nodes), 10)
        templates = {i.disk_template for i in c.instances.values()}
        self.assertTrue({"drbd", "plain"} <= templates)
        evacuate = [e for e in demo.events if e.get("diagnose", {}).get("status") == "evacuate"]
        self.assertEqual(len(evacuate), 1)
        self.assertEqual(evacuate[0]["at"], 20)  # make demo: seen within a minute
        self.assertIn(evacuate[0]["node"], c.nodes)

    def test_json_and_yaml_give_the_same_cluster(self) -> None:
        from_json = scenario.load(self.write("s.json", json.dumps(SCENARIO))).cluster
        from_yaml = scenario.load(self.write("s.yaml", yaml.safe_dump(SCENARIO))).cluster
        self.assertEqual(set(from_json.nodes), set(from_yaml.nodes))
        self.assertEqual(
            {
                n: (i.primary, i.secondaries, i.disk_template)
                for n, i in from_json.instances.items()
            },
            {
                n: (i.primary, i.secondaries, i.disk_template)
                for n, i in from_yaml.instances.items()
            },
        )

    def test_free_memory_derived_from_running_instances(self) -> None:
        c = scenario.loads(json.dumps(SCENARIO)).cluster
        n2 = c.nodes["n2"]
        # d1 (2048) and p1 (1024 default) run on n2; x1 is down.
        self.assertEqual(n2.mfree, n2.mtotal - n2.mnode - 2048 - 1024)

    def test_snapshot_addresses_are_replaced_by_loopback_ones(self) -> None:
        import attrs

        c = scenario.loads(json.dumps(SCENARIO)).cluster
        real = {
            n: attrs.evolve(node, pip="198.18.0.1", sip="10.0.0.1") for n, node in c.nodes.items()
        }
        sim = SimCluster.from_model(attrs.evolve(c, nodes=real), (3, 4))
        for node in sim.nodes.values():
            self.assertTrue(node.pip.startswith("127.3.4."), node.pip)
            self.assertEqual(node.sip, node.pip)

    def test_snapshot_round_trip_through_the_simulator(self) -> None:
        sim = SimCluster.from_model(scenario.loads(json.dumps(SCENARIO)).cluster, (3, 4))
        doc = model.to_json(sim.to_model())
        again = scenario.load(self.write("snap.json", json.dumps(doc))).cluster
        sim2 = SimCluster.from_model(again, (5, 6))
        for name in sim.nodes:
            self.assertEqual(sim.mfree(name), sim2.mfree(name), name)
            self.assertEqual(sim.dfree(name), sim2.dfree(name), name)
        self.assertEqual(
            {i.name: (i.primary, i.secondaries) for i in sim.instances.values()},
            {i.name: (i.primary, i.secondaries) for i in sim2.instances.values()},
        )

    def test_errors_name_the_file_and_object(self) -> None:
        bad = dict(SCENARIO, instances=[{"name": "z", "primary": "n1", "secondary": "nope"}])
        path = self.write("bad.json", json.dumps(bad))
        with self.assertRaises(scenario.ScenarioError) as cm:
            scenario.load(path)
        self.assertIn(path, str(cm.exception))
        self.assertIn("instance z", str(cm.exception))
        for text, fragment in [
            ('{"nodes": []}', "non-empty"),
            ('{"nodes": [{"name": "a", "mtotal": -1}]}', "mtotal"),
            ('{"nodes": [{"name": "a"}], "events": [{"at": 1, "bogus": 1}]}', "bogus"),
            ('{"format": "ganeti-maintd-snapshot", "version": 99, "cluster": {}}', "version"),
            ('{"nodes": [', "malformed JSON"),
            ('{"nodes": [{"name": "a", "cpu_load": NaN}]}', "x.json: malformed JSON: NaN is not"),
            ('{"nodes": [{"name": "a"}], "nodes": []}', "duplicate key 'nodes'"),
            ("[1, 2]", "neither"),
        ]:
            with self.assertRaises(scenario.ScenarioError) as cm:
                scenario.loads(text, "x.json")
            self.assertIn(fragment, str(cm.exception))
        with self.assertRaises(scenario.ScenarioError):
            scenario.load("/nonexistent/scenario.json")

    def test_the_master_cannot_start_offline_or_drained(self) -> None:
        for flags, word in (({"offline": True}, "offline"), ({"drained": True}, "drained"),
                            ({"master_candidate": False}, "not a candidate")):
            doc = {"master": "a", "nodes": [{"name": "a", **flags}, {"name": "b"}]}
            with self.assertRaises(scenario.ScenarioError) as cm:
                scenario.loads(json.dumps(doc), "x.json")
            self.assertIn(f"x.json: node a: the master cannot be {word}", str(cm.exception))
            self.assertIn("only via master-failover", str(cm.exception))
        doc = {"master": "a", "nodes": [{"name": "a"}, {"name": "b", "offline": True}]}
        self.assertTrue(scenario.loads(json.dumps(doc), "x.json").cluster.nodes["b"].offline)

    def test_pips_are_distinct_loopback_addresses(self) -> None:
        addrs = [pip_for((250, 255), i) for i in range(1000)]
        self.assertEqual(len(set(addrs)), 1000)
        for a in addrs:
            parts = [int(p) for p in a.split(".")]
            self.assertEqual(parts[0], 127)
            self.assertTrue(all(0 <= p <= 255 for p in parts))
            self.assertNotEqual(parts[3], 0)
            self.assertNotEqual(parts[3], 255)


class UsersTests(SynchronousTestCase):
    def test_users_file_formats(self) -> None:
        ha1 = hashlib.md5(b"bob:Ganeti Remote API:pw2").hexdigest()
        users = parse_users(
            "# comment\nalice {CLEARTEXT}pw1 write\n\nbob {HA1}" + ha1 + "\ncarol plain read\n"
        )
        self.assertTrue(users["alice"].write)
        self.assertTrue(users["alice"].check("pw1"))
        self.assertFalse(users["alice"].check("pw2"))
        self.assertTrue(users["bob"].check("pw2"))
        self.assertFalse(users["bob"].write)
        self.assertTrue(users["carol"].check("plain"))
        self.assertFalse(users["carol"].write)
        with self.assertRaises(UsersFileError) as cm:
            parse_users("lonely\n", "users")
        self.assertIn("users:1", str(cm.exception))

    def test_basic_auth_header(self) -> None:
        header = b"Basic " + base64.b64encode(b"u:p:with:colons")
        self.assertEqual(parse_basic_auth(header), ("u", "p:with:colons"))
        self.assertIsNone(parse_basic_auth(b"Basic !!!"))
        self.assertIsNone(parse_basic_auth(b"Bearer x"))
        self.assertIsNone(parse_basic_auth(None))
        self.assertFalse(User("u", "x").check(""))
