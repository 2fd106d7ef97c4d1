"""RapiClient against an in-memory RAPI (StubTreq + recorder).

Reads are answered with real Ganeti 3.0 samples; every write is checked for
method, path, query and body against what Ganeti 3.0's ``rlib2.py`` reads
(the handler named in each test).
"""

from __future__ import annotations

import json
import random
from typing import Any

from OpenSSL import SSL
from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionAborted
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.server import NOT_DONE_YET

from maintd.cluster.rapi.client import RapiClient
from maintd.cluster.rapi.errors import (
    RapiAuthError,
    RapiBadRequest,
    RapiMalformed,
    RapiNotFound,
    RapiServerError,
    RapiTimeout,
    RapiTLSError,
)
from maintd.cluster.rapi.jobs import JobResult
from tests.test_rapi_helpers import (
    Recorder,
    err_sample,
    ok,
    ok_sample,
    read_routes,
    run_until,
    sample,
)

BASE = "https://rapi.test:5080"


class ClientTestBase(SynchronousTestCase):
    def make(self, routes: dict[tuple[str, str], Any] | None = None, **kw: Any) -> RapiClient:
        self.recorder = Recorder(routes if routes is not None else read_routes())
        self.clock = task.Clock()
        self.stub = StubTreq(self.recorder)
        kw.setdefault("user", "maintd")
        kw.setdefault("password", "secret")
        kw.setdefault("rng", random.Random(1))
        return RapiClient(BASE, http=self.stub, clock=self.clock, **kw)

    def result(self, coro: Any) -> Any:
        d = Deferred.fromCoroutine(coro)
        self.stub.flush()
        run_until(self.clock, d)
        return self.successResultOf(d)

    def failure(self, coro: Any, *types: type[BaseException]) -> Any:
        d = Deferred.fromCoroutine(coro)
        self.stub.flush()
        run_until(self.clock, d)
        return self.failureResultOf(d, *types).value


class ReadTests(ClientTestBase):
    def test_reads_parse_real_samples(self) -> None:
        c = self.make()
        self.assertEqual(self.result(c.version()), 2)
        self.assertIn("node-evac-res1", self.result(c.features()))
        self.assertEqual(self.result(c.info())["name"], "cluster.sandbox.test")
        self.assertEqual(self.result(c.nodes_bulk())[0]["name"], "node1.sandbox.test")
        self.assertEqual(len(self.result(c.instances_bulk())), 6)
        self.assertEqual(self.result(c.groups_bulk())[0]["name"], "default")
        self.assertEqual(self.result(c.tags("cluster")), [])
        self.assertEqual(
            self.result(c.tags("node", "node1.sandbox.test")), ["maintd:repairready:0000-test"]
        )
        paths = [(s.method, s.path, s.args) for s in self.recorder.seen]
        self.assertIn(("GET", "/2/nodes", {"bulk": ["1"]}), paths)
        self.assertIn(("GET", "/2/instances", {"bulk": ["1"]}), paths)
        self.assertIn(("GET", "/2/groups", {"bulk": ["1"]}), paths)

    def test_basic_auth_sent(self) -> None:
        c = self.make()
        self.result(c.version())
        import base64

        expected = "Basic " + base64.b64encode(b"maintd:secret").decode()
        self.assertEqual(self.recorder.seen[0].headers["authorization"], expected)

    def test_load_cluster(self) -> None:
        c = self.make()
        cluster = self.result(c.load_cluster())
        self.assertEqual(cluster.name, "cluster.sandbox.test")
        self.assertEqual(set(cluster.nodes), {"node1.sandbox.test"})
        self.assertEqual(len(cluster.instances), 6)
        self.assertEqual(cluster.skipped, ())

    def test_load_cluster_reads_in_parallel(self) -> None:
        # No answer at all: all four reads must be outstanding at once.
        routes = {k: NOT_DONE_YET for k in read_routes()}
        c = self.make(routes)
        d = Deferred.fromCoroutine(c.load_cluster())
        self.stub.flush()
        self.assertEqual(
            sorted(s.path for s in self.recorder.seen),
            ["/2/groups", "/2/info", "/2/instances", "/2/nodes"],
        )
        self.clock.advance(31)
        self.failureResultOf(d, RapiTimeout)

    def test_jobs(self) -> None:
        c = self.make()
        self.assertEqual(self.result(c.get_job(20)), JobResult(20, "success", "", summary=("TAGS_SET",)))
        failed = self.result(c.get_job(27))
        self.assertEqual(failed.status, "error")
        self.assertIn("master-failover", failed.error)
        self.assertFalse(failed.ok)
        lost = self.result(c.get_job(999999))
        self.assertEqual((lost.status, lost.final, lost.ok), ("lost", True, False))
        jobs = self.result(c.jobs_bulk())
        self.assertEqual(len(jobs), len(sample("jobs-bulk.json")))
        self.assertTrue(all(j.final for j in jobs))

    def test_job_404_is_lost(self) -> None:
        c = self.make({})
        self.assertEqual(self.result(c.get_job(5)).status, "lost")

    def test_wait_job_change_long_poll(self) -> None:
        c = self.make({("GET", "/2/jobs/20/wait"): ok_sample("job-wait.json")})
        got = self.result(c.wait_job_change(20, ["status", "opstatus"], ["running"], 3))
        self.assertEqual(got["job_info"][0], "success")
        seen = self.recorder.seen[0]
        self.assertEqual(seen.method, "GET")
        self.assertEqual(
            seen.body,
            {"fields": ["status", "opstatus"], "previous_job_info": ["running"],
             "previous_log_serial": 3},
        )
        self.assertEqual(seen.headers["content-type"], "application/json")


def _job(jid: int, status: str) -> tuple[int, bytes]:
    doc = dict(sample("job-success.json"), id=jid, status=status, opstatus=[status])
    return ok(doc)


class WaitJobsTests(ClientTestBase):
    def test_waits_until_final_with_backoff(self) -> None:
        c = self.make(
            {
                ("GET", "/2/jobs/1"): [_job(1, "queued"), _job(1, "running"), _job(1, "success")],
                ("GET", "/2/jobs/2"): [_job(2, "running"), ok_sample("job-node-drain-master.json")],
                ("GET", "/2/jobs/3"): ok_sample("err-404-job.json"),
            }
        )
        d = Deferred.fromCoroutine(c.wait_jobs([1, 2, 3], timeout=60))
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        res = self.successResultOf(d)
        self.assertEqual(res[1].status, "success")
        self.assertEqual(res[2].status, "error")
        self.assertIn("master role", res[2].error)
        self.assertEqual(res[3].status, "lost")
        # 3 polls of job 1, 2 of job 2, 1 of the lost job 3 (final at once)
        counts: dict[str, int] = {}
        for s in self.recorder.seen:
            counts[s.path] = counts.get(s.path, 0) + 1
        self.assertEqual(counts, {"/2/jobs/1": 3, "/2/jobs/2": 2, "/2/jobs/3": 1})

    def test_timeout_returns_still_running(self) -> None:
        c = self.make({("GET", "/2/jobs/7"): _job(7, "running")})
        d = Deferred.fromCoroutine(c.wait_jobs([7], timeout=10))
        self.stub.flush()
        for _ in range(20):
            self.clock.advance(1)
        res = self.successResultOf(d)
        self.assertEqual(res[7].status, "running")
        self.assertFalse(res[7].final)
        # bounded: intervals 0.5, 1, 2, 4, then the 2.5 s left
        self.assertEqual(len(self.recorder.seen), 6)


class WriteTests(ClientTestBase):
    """Each write against the rlib2 handler it targets."""

    def write(self, method: str, path: str, coro_fn: Any, answer: Any = None) -> Any:
        c = self.make({(method, path): answer or ok(42)})
        job = self.result(coro_fn(c))
        self.assertEqual(job, 42)
        self.assertEqual(len(self.recorder.seen), 1)
        seen = self.recorder.seen[0]
        self.assertEqual((seen.method, seen.path), (method, path))
        if seen.body is not None:
            self.assertEqual(seen.headers["content-type"], "application/json")
        return seen

    def test_add_tags_each_kind(self) -> None:
        # _R_Tags.GetPutOpInput: tags from the repeated ``tag`` query argument
        for kind, name, path in [
            ("cluster", None, "/2/tags"),
            ("group", "default", "/2/groups/default/tags"),
            ("node", "node1.sandbox.test", "/2/nodes/node1.sandbox.test/tags"),
            ("instance", "inst1.sandbox.test", "/2/instances/inst1.sandbox.test/tags"),
        ]:
            seen = self.write(
                "PUT", path, lambda c, k=kind, n=name: c.add_tags(k, n, ["a:b", "c"], "maintd")
            )
            self.assertEqual(seen.args, {"tag": ["a:b", "c"], "reason": ["maintd"]})
            self.assertIsNone(seen.body)

    def test_remove_tags(self) -> None:
        seen = self.write(
            "DELETE",
            "/2/nodes/n%201/tags",
            lambda c: c.remove_tags("node", "n 1", ["x"], "maintd incident u-1"),
        )
        self.assertEqual(seen.args, {"tag": ["x"], "reason": ["maintd incident u-1"]})

    def test_real_job_id_sample(self) -> None:
        c = self.make({("PUT", "/2/tags"): ok_sample("put-node-tag.json")})
        self.assertEqual(self.result(c.add_tags("cluster", None, ["t"], "maintd")), 20)

    def test_bad_tag_kind_or_list(self) -> None:
        c = self.make({})
        self.failure(c.add_tags("network", "n", ["t"], "r"), ValueError)
        self.failure(c.add_tags("node", "n", [], "r"), ValueError)
        self.assertEqual(self.recorder.seen, [])

    def test_drain_and_undrain(self) -> None:
        # R_2_nodes_name_modify: POST body goes to OpNodeSetParams
        for drained in (True, False):
            seen = self.write(
                "POST",
                "/2/nodes/node1/modify",
                lambda c, d=drained: c.set_node_drained("node1", d, "maintd"),
            )
            self.assertEqual(seen.body, {"drained": drained})
            self.assertEqual(seen.args, {"reason": ["maintd"]})

    def test_evacuate(self) -> None:
        # R_2_nodes_name_evacuate: POST body -> OpNodeEvacuate (mode, iallocator, remote_node)
        seen = self.write(
            "POST", "/2/nodes/node1/evacuate",
            lambda c: c.evacuate_node("node1", mode="primary-only", iallocator="hail",
                                      reason="maintd incident X"),
        )
        self.assertEqual(seen.body, {"mode": "primary-only", "iallocator": "hail"})
        self.assertEqual(seen.args, {"reason": ["maintd incident X"]})
        seen = self.write(
            "POST", "/2/nodes/node1/evacuate",
            lambda c: c.evacuate_node("node1", remote_node="node2", reason="maintd"),
        )
        self.assertEqual(seen.body, {"mode": "all", "remote_node": "node2"})
        c = self.make({})
        self.failure(c.evacuate_node("n", iallocator="hail", remote_node="m", reason="r"),
                     ValueError)
        self.failure(c.evacuate_node("n", mode="everything", reason="r"), ValueError)

    def test_migrate(self) -> None:
        # R_2_instances_name_migrate: PUT body -> OpInstanceMigrate
        seen = self.write(
            "PUT", "/2/instances/i1/migrate",
            lambda c: c.migrate_instance("i1", target_node="n2", reason="maintd balance"),
        )
        self.assertEqual(seen.body, {"mode": "live", "allow_failover": False, "target_node": "n2"})
        self.assertEqual(seen.args, {"reason": ["maintd balance"]})
        seen = self.write(
            "PUT", "/2/instances/i1/migrate",
            lambda c: c.migrate_instance("i1", allow_failover=True, reason="maintd"),
        )
        self.assertEqual(seen.body, {"mode": "live", "allow_failover": True})

    def test_failover(self) -> None:
        # R_2_instances_name_failover: PUT body -> OpInstanceFailover
        seen = self.write(
            "PUT", "/2/instances/i1/failover",
            lambda c: c.failover_instance("i1", target_node="n3", ignore_consistency=True,
                                          reason="maintd harep i1"),
        )
        self.assertEqual(seen.body, {"ignore_consistency": True, "target_node": "n3"})
        self.assertEqual(seen.args, {"reason": ["maintd harep i1"]})

    def test_replace_disks(self) -> None:
        # R_2_instances_name_replace_disks: POST body (mode, remote_node | iallocator)
        seen = self.write(
            "POST", "/2/instances/i1/replace-disks",
            lambda c: c.replace_disks("i1", remote_node="n4", reason="maintd"),
        )
        self.assertEqual(seen.body, {"mode": "replace_new_secondary", "remote_node": "n4"})
        seen = self.write(
            "POST", "/2/instances/i1/replace-disks",
            lambda c: c.replace_disks("i1", iallocator="hail", reason="maintd"),
        )
        self.assertEqual(seen.body, {"mode": "replace_new_secondary", "iallocator": "hail"})
        seen = self.write(
            "POST", "/2/instances/i1/replace-disks",
            lambda c: c.replace_disks("i1", mode="replace_auto", reason="maintd"),
        )
        self.assertEqual(seen.body, {"mode": "replace_auto"})
        c = self.make({})
        self.failure(c.replace_disks("i1", reason="r"), ValueError)

    def test_recreate_disks(self) -> None:
        # R_2_instances_name_recreate_disks: POST body -> OpInstanceRecreateDisks
        seen = self.write(
            "POST", "/2/instances/i1/recreate-disks",
            lambda c: c.recreate_disks("i1", nodes=["n1", "n2"], reason="maintd"),
        )
        self.assertEqual(seen.body, {"nodes": ["n1", "n2"]})
        self.assertEqual(seen.args, {"reason": ["maintd"]})
        seen = self.write(
            "POST", "/2/instances/i1/recreate-disks",
            lambda c: c.recreate_disks("i1", iallocator="hail", reason="maintd"),
        )
        self.assertEqual(seen.body, {"iallocator": "hail"})

    def test_reinstall_body_without_query(self) -> None:
        # R_2_instances_name_reinstall.POST refuses query args next to a body
        seen = self.write(
            "POST", "/2/instances/i1/reinstall",
            lambda c: c.reinstall_instance("i1", os="noop", start=False, reason="maintd"),
        )
        self.assertEqual(seen.body, {"start": False, "os": "noop"})
        self.assertEqual(seen.args, {})

    def test_startup(self) -> None:
        # R_2_instances_name_startup: PUT, no body used
        seen = self.write(
            "PUT", "/2/instances/i1/startup",
            lambda c: c.startup_instance("i1", reason="maintd harep i1"),
        )
        self.assertIsNone(seen.body)
        self.assertEqual(seen.args, {"reason": ["maintd harep i1"]})

    def test_shutdown(self) -> None:
        # R_2_instances_name_shutdown: PUT, body optional, reason as query
        seen = self.write(
            "PUT", "/2/instances/i1/shutdown",
            lambda c: c.shutdown_instance("i1", reason="maintd harep i1"),
        )
        self.assertIsNone(seen.body)
        self.assertEqual(seen.args, {"reason": ["maintd harep i1"]})

    def test_write_answer_not_a_job_id(self) -> None:
        c = self.make({("PUT", "/2/tags"): ok({"job": 1})})
        err = self.failure(c.add_tags("cluster", None, ["t"], "r"), RapiMalformed)
        self.assertIn("/2/tags", str(err))


class ErrorTests(ClientTestBase):
    def test_400_unescapes_ganeti_message(self) -> None:
        c = self.make({("POST", "/2/nodes/n/modify"): err_sample(400, "err-400-role.json")})
        err = self.failure(c.set_node_drained("n", True, "r"), RapiBadRequest)
        self.assertEqual(err.status, 400)
        self.assertEqual(err.code, 400)
        self.assertEqual(err.ganeti_message, "Can't set 'bogus' role")
        self.assertIn("Can't set 'bogus' role", str(err))
        self.assertIn("POST https://rapi.test:5080/2/nodes/n/modify", str(err))

    def test_401(self) -> None:
        c = self.make({("GET", "/2/info"): err_sample(401, "err-401.json")})
        err = self.failure(c.info(), RapiAuthError)
        self.assertIn("Unauthorized", str(err))
        self.assertEqual(len(self.recorder.seen), 1)  # not retried

    def test_404(self) -> None:
        c = self.make({})
        err = self.failure(c.tags("node", "nope"), RapiNotFound)
        self.assertIn("/2/nodes/nope/tags", str(err))

    def test_501_unsupported_method(self) -> None:
        c = self.make({("GET", "/2/info"): err_sample(501, "err-405.json")})
        err = self.failure(c.info(), RapiServerError)
        self.assertIn("unsupported", str(err))
        self.assertEqual(len(self.recorder.seen), 1)  # 501 is not retried

    def test_503_read_retried_then_success(self) -> None:
        c = self.make({("GET", "/2/info"): [(503, b"busy"), (502, b""), ok_sample("info.json")]})
        info = self.result(c.info())
        self.assertEqual(info["name"], "cluster.sandbox.test")
        self.assertEqual(len(self.recorder.seen), 3)

    def test_read_retries_bounded(self) -> None:
        c = self.make({("GET", "/2/info"): (503, b"")}, read_retries=2)
        self.failure(c.info(), RapiServerError)
        self.assertEqual(len(self.recorder.seen), 3)

    def test_retry_backoff_grows(self) -> None:
        c = self.make({("GET", "/2/info"): (504, b"")}, read_retries=3, rng=random.Random(5))
        d = Deferred.fromCoroutine(c.info())
        self.stub.flush()
        times = [0.0]
        for _ in range(200):
            self.clock.advance(0.1)
            if len(self.recorder.seen) > len(times):
                times.append(self.clock.seconds())
        self.failureResultOf(d, RapiServerError)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        # base 0.5 doubling with +-50% jitter: 0.25-0.75, 0.5-1.5, 1-3
        self.assertEqual(len(gaps), 3)
        self.assertTrue(
            0.2 <= gaps[0] <= 0.85 and 0.45 <= gaps[1] <= 1.6 and 0.95 <= gaps[2] <= 3.1, gaps
        )
        self.assertLess(gaps[0], gaps[2])

    def test_503_write_not_retried(self) -> None:
        c = self.make({("PUT", "/2/instances/i/migrate"): [(503, b"busy"), ok(5)]})
        err = self.failure(c.migrate_instance("i", reason="r"), RapiServerError)
        self.assertEqual(err.status, 503)
        self.assertEqual(len(self.recorder.seen), 1)

    def test_non_json_body(self) -> None:
        c = self.make({("GET", "/2/info"): (200, b"<html>proxy error</html>")})
        err = self.failure(c.info(), RapiMalformed)
        self.assertIn("not JSON", str(err))
        self.assertIn("proxy error", str(err))

    def test_wrong_shape(self) -> None:
        c = self.make({("GET", "/2/nodes"): ok({"not": "a list"})})
        err = self.failure(c.nodes_bulk(), RapiMalformed)
        self.assertIn("expected a JSON list", str(err))

    def test_timeout(self) -> None:
        c = self.make({("GET", "/2/info"): NOT_DONE_YET}, timeout=5)
        d = Deferred.fromCoroutine(c.info())
        self.stub.flush()
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        err = self.failureResultOf(d, RapiTimeout).value
        self.assertIn("within 5s", str(err))
        self.assertEqual(len(self.recorder.seen), 1)  # timeouts are not retried

    def test_load_cluster_error_propagates(self) -> None:
        routes = read_routes()
        routes[("GET", "/2/instances")] = err_sample(401, "err-401.json")
        c = self.make(routes)
        self.failure(c.load_cluster(), RapiAuthError)

    def test_load_cluster_bad_info(self) -> None:
        routes = read_routes()
        routes[("GET", "/2/info")] = ok({"name": "c"})
        c = self.make(routes)
        err = self.failure(c.load_cluster(), RapiMalformed)
        self.assertIn("master", str(err))




class LoadClusterDecodeTests(ClientTestBase):
    """load_cluster decodes bulk bytes straight into model objects."""

    def test_bad_objects_reported_through_decoder(self) -> None:
        instances = sample("instances-bulk.json")
        instances[1]["disk.sizes"] = ["big"]
        instances[2] = 17
        nodes = sample("nodes-bulk.json")
        bad_node = dict(nodes[0], name="node9", uuid="u9", mtotal="lots")
        nodes.append(bad_node)
        routes = read_routes()
        routes[("GET", "/2/instances")] = ok(instances)
        routes[("GET", "/2/nodes")] = ok(nodes)
        cluster = self.result(self.make(routes).load_cluster())
        self.assertEqual(len(cluster.instances), 4)
        self.assertEqual(set(cluster.nodes), {"node1.sandbox.test"})
        skipped = {(k, n): why for k, n, why in cluster.skipped}
        self.assertIn("disk.sizes", skipped[("instance", "inst2.sandbox.test")])
        self.assertIn(("instance", "<instance #2>"), skipped)
        self.assertIn("mtotal", skipped[("node", "node9")])

    def test_same_cluster_as_plain_loader(self) -> None:
        from maintd.cluster.rapi.loader import build_cluster

        cluster = self.result(self.make().load_cluster())
        plain = build_cluster(
            sample("info.json"), sample("groups-bulk.json"), sample("nodes-bulk.json"),
            sample("instances-bulk.json"),
        )
        self.assertEqual(cluster, plain)

    def test_non_json_bulk_body(self) -> None:
        routes = read_routes()
        routes[("GET", "/2/instances")] = (200, b"[{\"name\": ")
        err = self.failure(self.make(routes).load_cluster(), RapiMalformed)
        self.assertIn("/2/instances", str(err))
        self.assertIn("not UTF-8 JSON", str(err))

    def test_answers_are_read_strictly(self) -> None:
        # NaN, a key twice, a lone surrogate: refused naming the URL and why
        info = json.dumps(sample("info.json")).encode()
        nodes = json.dumps(sample("nodes-bulk.json")).encode()
        for path, body, why in [
            ("/2/info", info.replace(b'"master_netmask": 32', b'"master_netmask": NaN'),
             "NaN is not JSON"),
            ("/2/info", info[:-1] + b', "name": "other"}', "duplicate key 'name'"),
            ("/2/nodes", nodes.replace(b'"mtotal": ', b'"mtotal": 1e999, "x": ', 1),
             "is too large"),
            ("/2/nodes", nodes.replace(b'"name": "node1', b'"name": "\\ud800node1', 1),
             "lone surrogate"),
        ]:
            self.assertNotIn(body, (info, nodes))
            routes = read_routes()
            routes[("GET", path)] = (200, body)
            err = self.failure(self.make(routes).load_cluster(), RapiMalformed)
            self.assertIn(path, str(err))
            self.assertIn(why, str(err))


class _AbortingHTTP:
    """An HTTP client whose ``/2/info`` fails TLS at once and whose other
    requests hang until cancelled, then fail as twisted.web's do when the
    connection is aborted (ResponseNeverReceived, not CancelledError)."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def request(self, method: str, url: str, **kw: Any) -> Deferred[Any]:
        self.requests.append(url)
        if "/2/info" in url:
            return fail(ResponseNeverReceived([Failure(SSL.Error("certificate verify failed"))]))

        def aborted(d: Deferred[Any]) -> None:
            d.errback(ResponseNeverReceived([Failure(ConnectionAborted())]))

        return Deferred(aborted)


class CancelTests(SynchronousTestCase):
    def test_a_failed_snapshot_leaves_no_retry_back_off_scheduled(self) -> None:
        # The root of the flaky DirtyReactorAggregateError in
        # test_rapi_snapshot_cmd: the sibling reads cancelled by load_cluster
        # saw the abort as a connection error and scheduled a retry.
        clock = task.Clock()
        http = _AbortingHTTP()
        c = RapiClient(BASE, http=http, clock=clock, rng=random.Random(1))
        d = Deferred.fromCoroutine(c.load_cluster())
        self.failureResultOf(d, RapiTLSError)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(60)
        self.assertEqual(len(http.requests), 4)  # nothing retried later

    def test_a_cancelled_read_schedules_no_retry(self) -> None:
        clock = task.Clock()
        http = _AbortingHTTP()
        c = RapiClient(BASE, http=http, clock=clock, rng=random.Random(1))
        d = Deferred.fromCoroutine(c.nodes_bulk())
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the request timeout
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
