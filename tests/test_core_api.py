"""The HTTP state API (maintd.api), in memory through treq's StubTreq."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from maintd.api import StateAPI
from maintd.state import Action, Incident, MaintState, RepairStatus

BASE = "http://127.0.0.1:1816"


def incident(n: int) -> Incident:
    return Incident(
        uuid=f"uuid-{n}",
        node=f"node-uuid-{n}",
        node_name=f"node{n}",
        original={"status": "live-repair", "command": "fix-disk", "details": {}},
        action=Action.LIVE_REPAIR,
        status=RepairStatus.PENDING,
        jobs=(40 + n,),
        tag=f"maintd:repairready:uuid-{n}",
        ctime=100.0,
        mtime=101.0,
        serial_no=3,
    )


STATE = MaintState(
    incidents=(incident(1), incident(2)),
    jobs=(41, 42),
    evacuated=("inst1", "inst2"),
    last_round={"number": 9, "result": "ok", "notes": [{"would": "migrate inst1"}]},
)


class APITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = StateAPI(STATE)
        self.http = StubTreq(self.api.resource())

    def request(self, method: str, path: str) -> tuple[int, Any, bytes]:
        response = self.successResultOf(self.http.request(method, BASE + path))
        body = self.successResultOf(response.content())
        return response.code, response.headers, body

    def get(self, path: str) -> Any:
        code, headers, body = self.request("GET", path)
        self.assertEqual(code, 200, (path, body))
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"], path)
        return json.loads(body)

    def test_root_lists_protocol_versions(self) -> None:
        self.assertEqual(self.get("/"), [1])

    def test_version_one_is_null(self) -> None:
        self.assertIsNone(self.get("/1"))

    def test_status_lists_incidents_as_documented(self) -> None:
        status = self.get("/1/status")
        self.assertEqual([i["uuid"] for i in status], ["uuid-1", "uuid-2"])
        first = status[0]
        for key in (
            "uuid",
            "node",
            "original",
            "repair-status",
            "jobs",
            "tag",
            "action",
            "ctime",
            "mtime",
            "serial_no",
        ):
            self.assertIn(key, first)
        self.assertEqual(first["repair-status"], "pending")
        self.assertEqual(first["jobs"], [41])
        self.assertEqual(first["node"], "node-uuid-1")
        self.assertEqual(first["original"]["command"], "fix-disk")

    def test_jobs_and_evacuated(self) -> None:
        self.assertEqual(self.get("/1/jobs"), [41, 42])
        self.assertEqual(self.get("/1/evacuated"), ["inst1", "inst2"])

    def test_last_round(self) -> None:
        self.assertEqual(self.get("/1/last-round")["notes"], [{"would": "migrate inst1"}])

    def test_trailing_slash_is_the_same_resource(self) -> None:
        for path in ("/1", "/1/status", "/1/jobs", "/1/evacuated", "/1/last-round"):
            self.assertEqual(self.get(path + "/"), self.get(path), path)

    def test_head_works_like_get(self) -> None:
        code, headers, body = self.request("HEAD", "/1/status")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])

    def test_unknown_path_is_404_json(self) -> None:
        for path in ("/2", "/1/statuses", "/1/status/uuid-1", "/favicon.ico"):
            code, headers, body = self.request("GET", path)
            self.assertEqual(code, 404, path)
            self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
            self.assertEqual(json.loads(body)["error"], "not found")

    def test_other_methods_are_405_json(self) -> None:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            code, headers, body = self.request(method, "/1/status")
            self.assertEqual(code, 405, method)
            self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
            self.assertEqual(json.loads(body)["method"], method)
            self.assertIn("GET", headers.getRawHeaders("allow")[0])

    def test_update_shows_the_new_state(self) -> None:
        self.api.update(STATE.without_incident("uuid-1"))
        self.assertEqual([i["uuid"] for i in self.get("/1/status")], ["uuid-2"])

    def test_bodies_are_encoded_once_per_change(self) -> None:
        body = self.api.body("status")
        # another round summary only: the incident list is not re-encoded
        self.api.update(
            MaintState(
                incidents=STATE.incidents,
                jobs=STATE.jobs,
                evacuated=STATE.evacuated,
                last_round={"number": 10},
            )
        )
        self.assertIs(self.api.body("status"), body)
        self.assertEqual(self.get("/1/last-round"), {"number": 10})

    def test_empty_state(self) -> None:
        self.http = StubTreq(StateAPI().resource())
        self.assertEqual(self.get("/1/status"), [])
        self.assertEqual(self.get("/1/jobs"), [])
        self.assertEqual(self.get("/1/evacuated"), [])
        self.assertEqual(self.get("/1/last-round"), {})
