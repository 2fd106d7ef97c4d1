"""QA: scenario files an operator writes by hand get clear errors, not silent surprises."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from maintd.sim import scenario

from .test_sim_jobs import SCENARIO


def _with(**changes: object) -> str:
    return json.dumps({**SCENARIO, **changes})


class HandWrittenScenarioTests(SynchronousTestCase):
    def assert_error(self, text: str, *fragments: str) -> None:
        with self.assertRaises(scenario.ScenarioError) as cm:
            scenario.loads(text, "mine.yaml")
        message = str(cm.exception)
        self.assertIn("mine.yaml", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_misspelt_node_keys_are_reported_not_ignored(self) -> None:
        # "memory" is not a node key (it is mtotal): the node would silently
        # get the default 64 GiB.
        nodes = [dict(SCENARIO["nodes"][0], memory=16384), *SCENARIO["nodes"][1:]]
        self.assert_error(_with(nodes=nodes), "node n1", "'memory'", "mtotal")

    def test_misspelt_instance_group_and_top_level_keys_are_reported(self) -> None:
        instances = [dict(SCENARIO["instances"][0], vcpu=2), *SCENARIO["instances"][1:]]
        self.assert_error(_with(instances=instances), "instance d1", "'vcpu'")
        groups = [{"name": "g1", "policy": "x"}, {"name": "g2"}]
        self.assert_error(_with(groups=groups), "group g1", "'policy'")
        self.assert_error(_with(cluster="c.test"), "'cluster'", "name")

    def test_entries_that_are_not_objects_are_reported(self) -> None:
        self.assert_error(_with(nodes=["n1"]), "node", "object")
        self.assert_error(_with(instances=[5]), "instance", "object")
        self.assert_error(_with(groups=["g1"]), "group", "object")
        self.assert_error(_with(defaults=5), "defaults", "object")

    def test_secondaries_list_as_in_rapi_is_accepted(self) -> None:
        instances = [
            {"name": "d1", "primary": "n2", "secondaries": ["n3"], "memory": 2048},
        ]
        cluster = scenario.loads(_with(instances=instances), "s.json").cluster
        self.assertEqual(list(cluster.instances["d1"].secondaries), ["n3"])
        self.assertEqual(cluster.instances["d1"].disk_template, "drbd")
        self.assert_error(
            _with(instances=[{"name": "d1", "primary": "n2", "secondaries": ["n3", "n4"]}]),
            "instance d1",
            "one secondary",
        )

    def test_broken_yaml_is_reported_as_yaml(self) -> None:
        # Not an hbal text file either: say what is wrong with the YAML.
        self.assert_error("name: c\nnodes: [\n", "YAML")

    def test_hbal_text_errors_still_name_the_text_format(self) -> None:
        self.assert_error("garbage|\n|||\n", "hbal text")


class ControlEventTests(SynchronousTestCase):
    """``PUT /sim/events`` checks an event as strictly as a scenario file does."""

    def setUp(self) -> None:
        from maintd.sim.control import Control

        from .test_sim_jobs import make_sim

        self.sim = make_sim()
        self.control = Control(self.sim)

    def put(self, event: object) -> None:
        self.control.handle("PUT", "/sim/events", event)

    def assert_refused(self, event: object, fragment: str) -> None:
        from maintd.sim.control import ControlError

        with self.assertRaises(ControlError) as cm:
            self.put(event)
        self.assertEqual(cm.exception.code, 400)
        self.assertIn(fragment, str(cm.exception))

    def test_misspelt_event_key_is_refused(self) -> None:
        # "diagnosis" instead of "diagnose" used to be accepted and do nothing.
        self.assert_refused({"node": "n2", "diagnosis": {"status": "evacuate"}}, "diagnosis")
        self.assertEqual(self.sim.cluster.nodes["n2"].diagnose.get("status"), "Ok")

    def test_unknown_node_and_non_boolean_offline_are_refused(self) -> None:
        self.assert_refused({"node": "nope", "mond": "down"}, "nope")
        # bool("false") is True: a string must not take the node offline.
        self.assert_refused({"node": "n2", "offline": "false"}, "offline")
        self.assertFalse(self.sim.cluster.nodes["n2"].offline)

    def test_a_good_event_applies(self) -> None:
        self.put({"node": "n2", "diagnose": {"status": "evacuate", "command": "", "details": ""}})
        self.assertEqual(self.sim.cluster.nodes["n2"].diagnose["status"], "evacuate")

    def test_scenario_events_are_checked_the_same_way(self) -> None:
        doc = dict(SCENARIO, events=[{"at": 5, "node": "n2", "offline": "yes"}])
        with self.assertRaises(scenario.ScenarioError) as cm:
            scenario.loads(json.dumps(doc), "ev.json")
        self.assertIn("offline", str(cm.exception))
