"""The simulator's RAPI front answers like Ganeti 3.0 (compared with real samples)."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from maintd.sim.rapi import RapiFront
from maintd.sim.users import User

from .test_sim_jobs import make_sim

DATA = os.path.join(os.path.dirname(__file__), "data", "sim")
BASE = "http://127.0.0.1:5080"
WRITER = ("admin", "secret")
READER = ("viewer", "pw")


def sample(name: str) -> Any:
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)


def sample_status(name: str) -> int:
    with open(os.path.join(DATA, "INDEX"), encoding="utf-8") as f:
        for line in f:
            file, status = line.split()
            if file == name:
                return int(status)
    raise KeyError(name)


class RapiTestBase(TestCase):
    anonymous_reads = False

    def setUp(self) -> None:
        self.sim = make_sim(job_seconds=1)
        users = {
            "admin": User("admin", "{CLEARTEXT}secret", write=True),
            "viewer": User("viewer", "pw", write=False),
        }
        self.front = RapiFront(self.sim, users, anonymous_reads=self.anonymous_reads)
        self.http = StubTreq(self.front.resource())
        self.addCleanup(self.front.stop)
        self.addCleanup(self.sim.stop)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        auth: Any = WRITER,
        raw: bytes | None = None,
        ctype: bytes = b"application/json",
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {}
        if auth is not None:
            kwargs["auth"] = auth
        kwargs["headers"] = {b"Content-Type": [ctype]}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["data"] = json.dumps(body).encode()
        resp = await self.http.request(method, BASE + path, **kwargs)
        text = await resp.content()
        try:
            return resp.code, json.loads(text)
        except ValueError:
            return resp.code, text

    async def finish_jobs(self) -> None:
        self.sim.clock.advance(0)
        self.sim.clock.advance(self.sim.jobs.job_seconds)


def d(coro: Any) -> defer.Deferred[Any]:
    return defer.ensureDeferred(coro)


class ShapeTests(RapiTestBase):
    """Field names and types compared with a real Ganeti 3.0.2 cluster's answers."""

    def assertSameShape(self, ours: Any, theirs: Any, where: str) -> None:  # noqa: N802
        self.assertEqual(sorted(ours), sorted(theirs), f"{where}: field names differ")
        for key, value in theirs.items():
            if value is None or ours[key] is None:
                continue
            kind: Any = type(value)
            if kind in (int, float):
                kind = (int, float)
            self.assertIsInstance(ours[key], kind, f"{where}: field {key}")

    def test_bulk_resources_have_the_real_fields(self) -> None:
        async def go() -> None:
            for path, name in [
                ("/2/nodes?bulk=1", "nodes-bulk.json"),
                ("/2/instances?bulk=1", "instances-bulk.json"),
                ("/2/groups?bulk=1", "groups-bulk.json"),
            ]:
                code, ours = await self.call("GET", path)
                self.assertEqual(code, 200)
                self.assertTrue(ours)
                for obj in ours:
                    self.assertSameShape(obj, sample(name)[0], path)

        return d(go())

    def test_single_objects_and_info_have_the_real_fields(self) -> None:
        async def go() -> None:
            for path, name in [
                ("/2/nodes/n2", "node.json"),
                ("/2/instances/d1", "instance.json"),
                ("/2/info", "info.json"),
            ]:
                code, ours = await self.call("GET", path)
                self.assertEqual(code, 200)
                self.assertSameShape(ours, sample(name), path)

        return d(go())

    def test_version_features_lists_and_role(self) -> None:
        async def go() -> None:
            self.assertEqual(await self.call("GET", "/version"), (200, sample("version.json")))
            self.assertEqual(await self.call("GET", "/2/features"), (200, sample("features.json")))
            code, nodes = await self.call("GET", "/2/nodes")
            self.assertEqual(set(nodes[0]), set(sample("nodes.json")[0]))
            self.assertEqual(nodes[0], {"id": "n1", "uri": "/2/nodes/n1"})
            self.assertEqual(
                await self.call("GET", "/2/nodes/n1/role"), (200, sample("node-role.json"))
            )
            self.assertEqual(await self.call("GET", "/2/nodes/n2/role"), (200, "regular"))

        return d(go())

    def test_jobs_have_the_real_fields(self) -> None:
        async def go() -> None:
            code, job_id = await self.call("PUT", "/2/nodes/n2/tags?tag=x&reason=maintd%20test")
            self.assertEqual(code, 200)
            self.assertIsInstance(job_id, int)
            await self.finish_jobs()
            code, job = await self.call("GET", f"/2/jobs/{job_id}")
            real = sample("job-success.json")
            self.assertSameShape(job, real, "job")
            self.assertSameShape(job["ops"][0], real["ops"][0], "tag opcode")
            self.assertEqual(
                [r[0] for r in job["ops"][0]["reason"]], [r[0] for r in real["ops"][0]["reason"]]
            )
            self.assertEqual(job["ops"][0]["reason"][0][1], "maintd test")
            code, bulk = await self.call("GET", "/2/jobs?bulk=1")
            self.assertEqual(sorted(bulk[0]), sorted(sample("jobs-bulk.json")[0]))

        return d(go())

    def test_unknown_job_is_200_with_all_fields_null(self) -> None:
        async def go() -> None:
            code, job = await self.call("GET", "/2/jobs/999999")
            self.assertEqual(code, sample_status("err-404-job.json"))
            self.assertEqual(job, sample("err-404-job.json"))

        return d(go())

    def test_errors_match_real_bodies(self) -> None:
        async def go() -> None:
            cases = [
                ("GET", "/2/nodes/nosuchnode", None, WRITER, "err-404-node.json"),
                ("GET", "/2/nosuchpath", None, WRITER, "err-404-path.json"),
                ("DELETE", "/2/info", None, WRITER, "err-405.json"),
                ("GET", "/2/info", None, None, "err-401.json"),
                ("GET", "/2/info", None, ("admin", "wrong"), "err-401-badpw.json"),
            ]
            for method, path, body, auth, name in cases:
                code, got = await self.call(method, path, body, auth)
                self.assertEqual((code, got), (sample_status(name), sample(name)), name)
            code, got = await self.call("PUT", "/2/nodes/n2/role", "bogus")
            self.assertEqual((code, got), (400, sample("err-400-role.json")))

        return d(go())

    def test_401_asks_for_basic_auth(self) -> None:
        async def go() -> None:
            resp = await self.http.get(BASE + "/2/info")
            self.assertEqual(resp.code, 401)
            self.assertEqual(
                resp.headers.getRawHeaders(b"www-authenticate"),
                [b'Basic realm="Ganeti Remote API"'],
            )

        return d(go())


class AuthTests(RapiTestBase):
    def test_read_only_user_reads_but_cannot_write(self) -> None:
        async def go() -> None:
            self.assertEqual((await self.call("GET", "/2/info", auth=READER))[0], 200)
            code, body = await self.call("PUT", "/2/tags?tag=a", auth=READER)
            self.assertEqual(code, 403)
            self.assertEqual(body["code"], 403)
            self.assertEqual(self.sim.jobs.jobs, {})

        return d(go())

    def test_control_api_needs_write_user(self) -> None:
        async def go() -> None:
            self.assertEqual((await self.call("GET", "/sim/state", auth=None))[0], 401)
            self.assertEqual((await self.call("GET", "/sim/state", auth=READER))[0], 403)

        return d(go())


class AnonymousReadTests(RapiTestBase):
    anonymous_reads = True

    def test_gets_need_no_credentials_but_writes_do(self) -> None:
        async def go() -> None:
            code, nodes = await self.call("GET", "/2/nodes?bulk=1", auth=None)
            self.assertEqual(code, 200)
            self.assertEqual(len(nodes), 5)
            self.assertEqual((await self.call("PUT", "/2/tags?tag=a", auth=None))[0], 401)

        return d(go())


class WriteTests(RapiTestBase):
    def test_tags_round_trip_through_rapi(self) -> None:
        async def go() -> None:
            for path in (
                "/2/tags",
                "/2/nodes/n2/tags",
                "/2/instances/d1/tags",
                "/2/groups/g1/tags",
            ):
                tag = quote("maintd:repairready:0000-test")
                code, _ = await self.call("PUT", f"{path}?tag={tag}&tag=two")
                self.assertEqual(code, 200)
                await self.finish_jobs()
                self.assertEqual(
                    await self.call("GET", path), (200, ["maintd:repairready:0000-test", "two"])
                )
                await self.call("DELETE", f"{path}?tag=two")
                await self.finish_jobs()
                self.assertEqual(
                    await self.call("GET", path), (200, ["maintd:repairready:0000-test"])
                )

        return d(go())

    def test_dry_run_tag_changes_nothing(self) -> None:
        async def go() -> None:
            await self.call("PUT", "/2/nodes/n2/tags?tag=a&dry-run=1")
            await self.finish_jobs()
            self.assertEqual(await self.call("GET", "/2/nodes/n2/tags"), (200, []))

        return d(go())

    def test_drain_via_modify_and_role(self) -> None:
        async def go() -> None:
            code, job_id = await self.call(
                "POST", "/2/nodes/n2/modify?reason=maintd", {"drained": True}
            )
            await self.finish_jobs()
            self.assertEqual(await self.call("GET", "/2/nodes/n2/role"), (200, "drained"))
            _, job = await self.call("GET", f"/2/jobs/{job_id}")
            op = job["ops"][0]
            self.assertEqual(
                (op["OP_ID"], op["node_name"], op["drained"]), ("OP_NODE_SET_PARAMS", "n2", True)
            )
            self.assertEqual(op["reason"][0][:2], ["gnt:user", "maintd"])
            self.assertEqual(op["reason"][1][0], "gnt:library:rlib2:nodes_name_modify")
            await self.call("PUT", "/2/nodes/n2/role", "regular")
            await self.finish_jobs()
            self.assertEqual(await self.call("GET", "/2/nodes/n2/role"), (200, "regular"))
            await self.call("PUT", "/2/nodes/n3/role", "offline")
            await self.finish_jobs()
            code, node = await self.call("GET", "/2/nodes/n3")
            self.assertEqual((node["offline"], node["role"], node["mfree"]), (True, "O", None))

        return d(go())

    def test_draining_the_master_gives_ganetis_error_job(self) -> None:
        async def go() -> None:
            _, job_id = await self.call("POST", "/2/nodes/n1/modify", {"drained": True})
            await self.finish_jobs()
            _, job = await self.call("GET", f"/2/jobs/{job_id}")
            real = sample("job-node-drain-master.json")
            self.assertEqual((job["status"], job["opresult"]), (real["status"], real["opresult"]))
            self.assertEqual(job["summary"], ["NODE_SET_PARAMS(n1)"])

        return d(go())

    def test_no_role_change_of_the_master_only_via_master_failover(self) -> None:
        # Ganeti's LUNodeSetParams.CheckPrereq refuses any of the three flags
        # on the master; RAPI accepts the job (200), the job fails.
        async def go() -> None:
            real = sample("job-node-drain-master.json")["opresult"]
            for role in ("offline", "drained", "regular", "master-candidate"):
                code, job_id = await self.call("PUT", "/2/nodes/n1/role", role)
                self.assertEqual(code, 200, role)
                await self.finish_jobs()
                _, job = await self.call("GET", f"/2/jobs/{job_id}")
                self.assertEqual((job["status"], job["opresult"]), ("error", real), role)
                self.assertEqual(await self.call("GET", "/2/nodes/n1/role"), (200, "master"))
            _, node = await self.call("GET", "/2/nodes/n1")
            self.assertEqual((node["offline"], node["drained"]), (False, False))

        return d(go())

    def test_migrate_plain_gives_ganetis_error_job(self) -> None:
        async def go() -> None:
            _, job_id = await self.call("PUT", "/2/instances/p1/migrate", {})
            await self.finish_jobs()
            _, job = await self.call("GET", f"/2/jobs/{job_id}")
            real = sample("job-migrate-file.json")
            self.assertEqual(sorted(job["ops"][0]), sorted(real["ops"][0]))
            self.assertEqual(job["status"], "error")
            self.assertEqual(job["opresult"][0][0], "OpPrereqError")
            self.assertEqual(job["opresult"][0][1][1], "wrong_state")

        return d(go())

    def test_replace_disks_of_plain_gives_ganetis_error_job(self) -> None:
        async def go() -> None:
            _, job_id = await self.call(
                "POST", "/2/instances/p1/replace-disks", {"mode": "replace_new_secondary"}
            )
            await self.finish_jobs()
            _, job = await self.call("GET", f"/2/jobs/{job_id}")
            real = sample("job-replace-disks-file.json")
            self.assertEqual(sorted(job["ops"][0]), sorted(real["ops"][0]))
            self.assertEqual(job["ops"][0]["iallocator"], "hail")
            self.assertEqual(job["ops"][0]["instance_uuid"], self.sim.cluster.instances["p1"].uuid)
            self.assertEqual(job["opresult"], real["opresult"])

        return d(go())

    def test_failover_and_evacuate_opcodes_have_the_real_fields(self) -> None:
        async def go() -> None:
            for method, path, body, name in [
                ("PUT", "/2/instances/x1/failover", {}, "job-failover-diskless.json"),
                (
                    "POST",
                    "/2/nodes/n2/evacuate",
                    {"mode": "primary-only"},
                    "job-node-evacuate.json",
                ),
            ]:
                _, job_id = await self.call(method, path, body)
                await self.finish_jobs()
                _, job = await self.call("GET", f"/2/jobs/{job_id}")
                real = sample(name)["ops"][0]
                self.assertEqual(sorted(job["ops"][0]), sorted(real), name)
                self.assertEqual(job["ops"][0]["iallocator"], real["iallocator"])

        return d(go())

    def test_migrate_drbd_through_rapi_swaps_nodes(self) -> None:
        async def go() -> None:
            await self.call("PUT", "/2/instances/d1/migrate", {"mode": "live"})
            await self.finish_jobs()
            _, inst = await self.call("GET", "/2/instances/d1")
            self.assertEqual((inst["pnode"], inst["snodes"]), ("n3", ["n2"]))
            _, nodes = await self.call("GET", "/2/nodes?bulk=1")
            by_name = {n["name"]: n for n in nodes}
            self.assertIn("d1", by_name["n3"]["pinst_list"])
            self.assertIn("d1", by_name["n2"]["sinst_list"])

        return d(go())

    def test_unknown_body_parameter_is_400(self) -> None:
        async def go() -> None:
            code, body = await self.call("PUT", "/2/instances/d1/migrate", {"bogus": 1})
            self.assertEqual(code, 400)
            self.assertIn("bogus", body["message"])
            code, body = await self.call("PUT", "/2/instances/d1/migrate", raw=b"{not json")
            self.assertEqual((code, body["message"]), (400, "Unable to parse JSON data"))
            code, body = await self.call(
                "PUT", "/2/instances/d1/migrate", {"mode": "live"}, ctype=b"text/plain"
            )
            self.assertEqual((code, body["message"]), (415, "Unsupported Media Type"))
            self.assertEqual(self.sim.jobs.jobs, {})

        return d(go())

    def test_other_writes_submit_the_right_opcodes(self) -> None:
        async def go() -> None:
            cases = [
                (
                    "PUT",
                    "/2/instances/d1/failover",
                    {"target_node": "n3"},
                    ["OP_INSTANCE_FAILOVER"],
                ),
                (
                    "POST",
                    "/2/instances/d1/replace-disks",
                    {"mode": "replace_new_secondary", "remote_node": "n1"},
                    ["OP_INSTANCE_REPLACE_DISKS"],
                ),
                (
                    "POST",
                    "/2/instances/x1/recreate-disks",
                    {"nodes": ["n2"]},
                    ["OP_INSTANCE_RECREATE_DISKS"],
                ),
                (
                    "POST",
                    "/2/instances/x1/reinstall",
                    {"os": "debian", "start": False},
                    ["OP_INSTANCE_SHUTDOWN", "OP_INSTANCE_REINSTALL"],
                ),
                ("PUT", "/2/instances/x1/startup", None, ["OP_INSTANCE_STARTUP"]),
                ("POST", "/2/nodes/n5/evacuate?dry-run=1", {"mode": "all"}, ["OP_NODE_EVACUATE"]),
            ]
            for method, path, body, op_ids in cases:
                code, job_id = await self.call(method, path, body)
                self.assertEqual(code, 200, path)
                await self.finish_jobs()
                _, job = await self.call("GET", f"/2/jobs/{job_id}")
                self.assertEqual([op["OP_ID"] for op in job["ops"]], op_ids)
                self.assertEqual(job["status"], "success", (path, job["opresult"]))

        return d(go())

    def test_job_wait_returns_changes(self) -> None:
        async def go() -> None:
            _, job_id = await self.call("PUT", "/2/tags?tag=a")
            body = {
                "fields": ["status", "opstatus"],
                "previous_job_info": None,
                "previous_log_serial": None,
            }
            code, got = await self.call("GET", f"/2/jobs/{job_id}/wait", body)
            self.assertEqual(
                (code, got), (200, {"job_info": ["queued", ["queued"]], "log_entries": []})
            )
            waiting = defer.ensureDeferred(
                self.call(
                    "GET",
                    f"/2/jobs/{job_id}/wait",
                    dict(body, previous_job_info=["queued", ["queued"]]),
                )
            )
            self.http.flush()
            self.assertNoResult(waiting)  # long-polls until the job changes
            self.sim.clock.advance(0)
            self.http.flush()
            code, got = await waiting
            self.assertEqual(got["job_info"], ["running", ["running"]])
            self.sim.clock.advance(1)
            code, got = await self.call(
                "GET",
                f"/2/jobs/{job_id}/wait",
                dict(body, previous_job_info=["running", ["running"]]),
            )
            self.assertEqual(got, sample("job-wait.json"))

        return d(go())

    def test_job_wait_answers_null_when_nothing_changes(self) -> None:
        async def go() -> None:
            self.sim.jobs.job_seconds = 100
            _, job_id = await self.call("PUT", "/2/tags?tag=a")
            self.sim.clock.advance(0)
            body = {"fields": ["status"], "previous_job_info": ["running"]}
            waiting = defer.ensureDeferred(self.call("GET", f"/2/jobs/{job_id}/wait", body))
            self.http.flush()
            self.assertNoResult(waiting)
            self.sim.clock.advance(10)  # Ganeti's wait timeout
            self.http.flush()
            self.assertEqual(await waiting, (200, None))

        return d(go())

    def test_job_wait_needs_write_access(self) -> None:
        async def go() -> None:
            code, _ = await self.call("GET", "/2/jobs/1/wait", {"fields": []}, auth=READER)
            self.assertEqual(code, 403)

        return d(go())


class FaultTests(RapiTestBase):
    def test_rapi_status_fault_for_count_requests(self) -> None:
        async def go() -> None:
            code, _ = await self.call("PUT", "/sim/rapi/fault", {"status": 503, "count": 2})
            self.assertEqual(code, 200)
            for _ in range(2):
                code, body = await self.call("GET", "/2/info")
                self.assertEqual((code, body["code"]), (503, 503))
            self.assertEqual((await self.call("GET", "/2/info"))[0], 200)

        return d(go())

    def test_rapi_garbage_fault(self) -> None:
        async def go() -> None:
            await self.call("PUT", "/sim/rapi/fault", "garbage")
            code, body = await self.call("GET", "/2/nodes?bulk=1")
            self.assertEqual(code, 200)
            self.assertIsInstance(body, bytes)  # not JSON

        return d(go())

    def test_rapi_hang_fault_never_answers(self) -> None:
        async def go() -> None:
            await self.call("PUT", "/sim/rapi/fault", "hang")
            pending = defer.ensureDeferred(self.call("GET", "/2/info"))
            self.assertNoResult(pending)
            self.front.stop()
            self.http.flush()
            self.failureResultOf(pending)

        return d(go())

    def test_fail_next_through_control_api(self) -> None:
        async def go() -> None:
            await self.call("PUT", "/sim/jobs/fail-next", 1)
            _, first = await self.call("PUT", "/2/tags?tag=a")
            await self.finish_jobs()
            _, second = await self.call("PUT", "/2/tags?tag=b")
            await self.finish_jobs()
            _, j1 = await self.call("GET", f"/2/jobs/{first}")
            _, j2 = await self.call("GET", f"/2/jobs/{second}")
            self.assertEqual((j1["status"], j2["status"]), ("error", "success"))
            self.assertEqual(await self.call("GET", "/2/tags"), (200, ["b"]))

        return d(go())

    def test_control_diagnose_mond_and_state(self) -> None:
        async def go() -> None:
            report = {"status": "live-repair", "command": "fix-disk", "details": "sda"}
            self.assertEqual((await self.call("PUT", "/sim/nodes/n2/diagnose", report))[0], 200)
            self.assertEqual((await self.call("PUT", "/sim/nodes/n3/mond", "garbage"))[0], 200)
            code, state = await self.call("GET", "/sim/state")
            self.assertEqual(code, 200)
            self.assertEqual(state["nodes"]["n2"]["diagnose"], report)
            self.assertEqual(state["faults"]["mond"], {"n3": "garbage"})
            self.assertEqual((await self.call("PUT", "/sim/nodes/n3/mond", "sideways"))[0], 400)
            self.assertEqual((await self.call("PUT", "/sim/nodes/zz/mond", "up"))[0], 404)
            self.assertEqual((await self.call("PUT", "/sim/jobs/fail-next", "x"))[0], 400)

        return d(go())


class ControlTests(RapiTestBase):
    def test_node_dies_and_comes_back(self) -> None:
        async def go() -> None:
            self.assertEqual((await self.call("PUT", "/sim/nodes/n3/offline", True))[0], 200)
            _, node = await self.call("GET", "/2/nodes/n3")
            self.assertEqual((node["offline"], node["role"], node["mtotal"]), (True, "O", None))
            _, inst = await self.call("GET", "/2/instances/d2")
            self.assertEqual((inst["status"], inst["oper_state"]), ("ERROR_nodeoffline", None))
            self.assertEqual(self.sim.faults.mond_mode("n3"), "down")
            await self.call("PUT", "/sim/nodes/n3/offline", False)
            _, inst = await self.call("GET", "/2/instances/d2")
            self.assertEqual(inst["status"], "running")
            self.assertEqual(self.sim.faults.mond_mode("n3"), "up")
            code, body = await self.call("PUT", "/sim/nodes/n1/offline", True)
            self.assertEqual(code, 400)
            self.assertIn("master", body["message"])

        return d(go())

    def test_events_applied_now_and_bad_ones_rejected(self) -> None:
        async def go() -> None:
            event = {"node": "n2", "diagnose": {"status": "evacuate-failover"}}
            self.assertEqual((await self.call("PUT", "/sim/events", event))[0], 200)
            self.assertEqual(self.sim.cluster.nodes["n2"].diagnose["status"], "evacuate-failover")
            code, body = await self.call("PUT", "/sim/events", {"node": "zz", "mond": "down"})
            self.assertEqual(code, 400)
            self.assertIn("zz", body["message"])
            self.assertEqual((await self.call("GET", "/sim/nothing"))[0], 404)
            self.assertEqual((await self.call("DELETE", "/sim/state"))[0], 501)

        return d(go())


class CacheTests(RapiTestBase):
    def test_bulk_answer_follows_changes(self) -> None:
        async def go() -> None:
            _, before = await self.call("GET", "/2/nodes?bulk=1")
            _, again = await self.call("GET", "/2/nodes?bulk=1")
            self.assertEqual(before, again)
            await self.call("PUT", "/2/nodes/n2/tags?tag=new")
            await self.finish_jobs()
            _, after = await self.call("GET", "/2/nodes?bulk=1")
            self.assertEqual({n["name"]: n["tags"] for n in after}["n2"], ["new"])

        return d(go())


class MasterFailoverTests(RapiTestBase):
    def test_master_moves_queue_and_running_jobs_kept(self) -> None:
        async def go() -> None:
            code, job = await self.call("PUT", "/2/nodes/n2/tags?tag=x&reason=r")
            self.assertEqual(code, 200)
            self.sim.clock.advance(0)
            self.assertEqual(self.sim.jobs.jobs[job].status, "running")
            code, body = await self.call("PUT", "/sim/master", "n2")
            self.assertEqual((code, body), (200, "n2"))
            self.assertEqual((await self.call("GET", "/2/info"))[1]["master"], "n2")
            self.assertEqual((await self.call("GET", "/sim/master"))[1], "n2")
            nodes = {n["name"]: n for n in (await self.call("GET", "/2/nodes?bulk=1"))[1]}
            self.assertEqual((nodes["n1"]["role"], nodes["n2"]["role"]), ("C", "M"))
            # the queue survives: the running job finishes, ids continue
            await self.finish_jobs()
            code, doc = await self.call("GET", f"/2/jobs/{job}")
            self.assertEqual(doc["status"], "success")
            code, job2 = await self.call("PUT", "/2/nodes/n3/tags?tag=y")
            self.assertEqual(job2, job + 1)
            # the new master cannot be drained; the old one now can
            code, _ = await self.call("POST", "/2/nodes/n1/modify", {"drained": True})
            self.assertEqual(code, 200)

        return d(go())

    def test_bad_master_requests(self) -> None:
        async def go() -> None:
            for body, want in [("nope", 400), (7, 400), ("n1", 200)]:
                code, _ = await self.call("PUT", "/sim/master", body)
                self.assertEqual(code, want, body)
            self.assertEqual((await self.call("GET", "/2/info"))[1]["master"], "n1")
            await self.call("PUT", "/sim/nodes/n3/offline", True)
            code, body = await self.call("PUT", "/sim/master", "n3")
            self.assertEqual(code, 400)
            self.assertIn("cannot become the master", json.dumps(body))

        return d(go())
