"""QA: a state file the daemon cannot load is refused with a message an operator can act on."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from maintd.daemon.store import StateStore, StoreError

GOOD_INCIDENT = {
    "uuid": "u-1",
    "node": "node-uuid",
    "node-name": "node1",
    "original": {"status": "evacuate"},
    "action": "evacuate",
    "repair-status": "pending",
    "jobs": [3],
}


class UnloadableStateTests(SynchronousTestCase):
    def refused(self, doc: Any) -> str:
        state_dir = self.mktemp()
        os.makedirs(state_dir)
        path = os.path.join(state_dir, "state.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        with self.assertRaises(StoreError) as cm:
            StateStore.open(state_dir)
        message = str(cm.exception)
        self.assertIn(path, message)
        # Python's exception reprs are no message for an operator.
        for noise in ("KeyError", "ValueError(", "TypeError", "invalid literal"):
            self.assertNotIn(noise, message)
        return message

    def state(self, **fields: Any) -> dict[str, Any]:
        return {"format": "ganeti-maintd-state", "schema": 1, "incidents": [], "jobs": [],
                "evacuated": [], **fields}

    def test_newer_schema(self) -> None:
        self.assertIn("schema 2", self.refused(self.state(schema=2)))

    def test_incident_missing_a_field_names_the_incident_and_field(self) -> None:
        broken = {k: v for k, v in GOOD_INCIDENT.items() if k != "node"}
        message = self.refused(self.state(incidents=[GOOD_INCIDENT, broken]))
        self.assertIn("incident 2", message)
        self.assertIn("'node'", message)

    def test_incident_field_of_the_wrong_type(self) -> None:
        message = self.refused(self.state(incidents=[dict(GOOD_INCIDENT, uuid=5)]))
        self.assertIn("incident 1", message)
        self.assertIn("uuid", message)
        message = self.refused(self.state(incidents=[dict(GOOD_INCIDENT, jobs=["x"])]))
        self.assertIn("jobs", message)
        message = self.refused(self.state(incidents=["not an object"]))
        self.assertIn("incident 1", message)

    def test_bad_job_list(self) -> None:
        message = self.refused(self.state(jobs=["x"]))
        self.assertIn("jobs", message)

    def test_a_good_file_still_loads(self) -> None:
        state_dir = self.mktemp()
        os.makedirs(state_dir)
        with open(os.path.join(state_dir, "state.json"), "w") as f:
            json.dump(self.state(incidents=[GOOD_INCIDENT], jobs=[3]), f)
        store = StateStore.open(state_dir)
        self.addCleanup(store.close)
        self.assertEqual([i.uuid for i in store.state.incidents], ["u-1"])
        self.assertEqual(store.state.jobs, (3,))
