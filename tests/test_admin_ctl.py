"""Issue 14 item 4: ``GET /1/status/UUID``, ``ganeti-maintd-ctl show``/``round-now``,
uuid prefixes, the ctl's exit statuses.

Pure parts with plain values and ``task.Clock``; the commands end to end:
the installed ``ganeti-maintd-ctl`` as a subprocess against a real control
socket (a ControlService on a test store, or the whole daemon with its
simulated cluster).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from maintd.admin import ctl
from maintd.cluster.jobinfo import JobInfo
from maintd.cluster.rapi.errors import RapiServerError
from maintd.cluster.rapi.jobs import JobResult
from maintd.daemon.control import ControlService
from maintd.daemon.scheduler import RoundService
from maintd.daemon.state import Action, MaintState, RepairStatus
from maintd.decide.incidents import IncidentError, resolve_incident
from tests.test_round_control import FakeStore
from tests.test_round_e2e import EVACUATE, Daemon, drbd, scenario
from tests.test_round_incidents import incident

from .commands import spawn


def state(*uuids: str) -> MaintState:
    return MaintState(incidents=tuple(
        incident(f"node-{n}", Action.EVACUATE, uuid=u, status=RepairStatus.PENDING)
        for n, u in enumerate(uuids)))


class ResolveTests(SynchronousTestCase):
    def test_exact_uuid_wins_over_a_longer_match(self) -> None:
        s = state("abc", "abcdef")
        self.assertEqual(resolve_incident(s, "abc").uuid, "abc")

    def test_unique_prefix(self) -> None:
        s = state("abc123", "abd456", "ffff")
        self.assertEqual(resolve_incident(s, "abc").uuid, "abc123")
        self.assertEqual(resolve_incident(s, "f").uuid, "ffff")

    def test_ambiguous_prefix_names_the_candidates(self) -> None:
        s = state("abc123", "abd456", "ffff")
        e = self.assertRaises(IncidentError, resolve_incident, s, "ab")
        self.assertIn("ab is ambiguous", str(e))
        self.assertIn("abc123, abd456", str(e))

    def test_many_candidates_are_counted_not_all_listed(self) -> None:
        s = state(*(f"aa{i:02d}" for i in range(15)))
        e = str(self.assertRaises(IncidentError, resolve_incident, s, "aa"))
        self.assertIn("15 incidents", e)
        self.assertIn("and 5 more", e)
        self.assertNotIn("aa14", e)

    def test_no_match_and_empty(self) -> None:
        s = state("abc")
        self.assertIn("no incident zz", str(self.assertRaises(IncidentError, resolve_incident, s, "zz")))
        self.assertRaises(IncidentError, resolve_incident, s, "")


class RoundNowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.started: list[int] = []
        self.pending: defer.Deferred[None] | None = None

        async def round_fn(number: int, stopping: Any) -> None:
            self.started.append(number)
            if self.pending is not None:
                await self.pending

        self.svc = RoundService(round_fn, clock=self.clock, round_delay=300)
        self.svc.startService()
        self.clock.advance(0)
        self.assertEqual(self.started, [1])

    def test_idle_starts_now_and_keeps_the_rhythm(self) -> None:
        self.assertEqual(self.svc.run_now(), "started")
        self.assertEqual(self.started, [1, 2])
        self.clock.advance(299)
        self.assertEqual(self.started, [1, 2], "the old timer was cancelled")
        self.clock.advance(1)
        self.assertEqual(self.started, [1, 2, 3])

    def test_running_queues_the_next_right_after(self) -> None:
        self.pending = defer.Deferred()
        self.svc.run_now()  # round 2 starts and hangs
        self.assertEqual(self.svc.run_now(), "queued")
        self.assertEqual(self.svc.run_now(), "queued", "asking twice queues one round")
        self.assertEqual(self.started, [1, 2], "never two rounds at once")
        pending, self.pending = self.pending, None
        pending.callback(None)
        self.clock.advance(0)
        self.assertEqual(self.started, [1, 2, 3])
        self.clock.advance(299)
        self.assertEqual(self.started, [1, 2, 3], "then the usual delay again")

    def test_stopping_refuses(self) -> None:
        self.svc.stopService()
        self.assertEqual(self.svc.run_now(), "stopping")
        self.assertEqual(self.started, [1])


class FakeRapi:
    def __init__(self) -> None:
        self.asked: list[int] = []
        self.answers: dict[int, Any] = {}

    async def get_job(self, job_id: int) -> JobResult:
        self.asked.append(job_id)
        answer = self.answers[job_id]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, defer.Deferred):
            return await answer  # type: ignore[no-any-return]
        return answer  # type: ignore[no-any-return]


class JobInfoTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.rapi = FakeRapi()
        self.info = JobInfo(self.rapi, self.clock, timeout=5)

    def details(self, *ids: int) -> list[dict[str, Any]]:
        return self.successResultOf(defer.Deferred.fromCoroutine(self.info.details(ids)))

    def test_finished_jobs_are_cached_running_ones_asked_again(self) -> None:
        self.rapi.answers = {1: JobResult(1, "success", summary=["NODE_SET_PARAMS(n2)"]),
                             2: JobResult(2, "running", summary=["NODE_EVACUATE(n2)"])}
        first = self.details(1, 2)
        self.assertEqual(first, [
            {"id": 1, "status": "success", "summary": ["NODE_SET_PARAMS(n2)"], "error": ""},
            {"id": 2, "status": "running", "summary": ["NODE_EVACUATE(n2)"], "error": ""}])
        self.rapi.answers[2] = JobResult(2, "error", "OpExecError: boom", ["NODE_EVACUATE(n2)"])
        second = self.details(1, 2)
        self.assertEqual(second[1]["status"], "error")
        self.assertEqual(second[1]["error"], "OpExecError: boom")
        self.assertEqual(self.rapi.asked, [1, 2, 2])

    def test_slow_or_failing_rapi_gives_unknown_with_the_reason(self) -> None:
        self.rapi.answers = {1: defer.Deferred(), 2: RapiServerError("HTTP 502", method="GET",
                                                                      url="https://r/2/jobs/2")}
        d = defer.Deferred.fromCoroutine(self.info.details([1, 2]))
        self.assertNoResult(d)
        self.clock.advance(5)
        slow, failed = self.successResultOf(d)
        self.assertEqual((slow["status"], failed["status"]), ("unknown", "unknown"))
        self.assertIn("within 5s", slow["error"])
        self.assertIn("502", failed["error"])

    def test_without_rapi(self) -> None:
        info = JobInfo(None, self.clock)
        [job] = self.successResultOf(defer.Deferred.fromCoroutine(info.details([7])))
        self.assertEqual((job["id"], job["status"]), (7, "unknown"))


class CtlCommandTests(TestCase):
    """``ganeti-maintd-ctl`` (the installed script) against a real control socket."""

    timeout = 120

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mdctl-")  # short: UNIX socket path limit
        self.addCleanup(lambda: __import__("shutil").rmtree(self.dir, True))
        self.path = os.path.join(self.dir, "ctl.sock")
        self.store = FakeStore(state("aaaa1111", "aaaa2222", "bbbb3333"))
        self.svc = ControlService(self.path, self.store, reactor)
        self.svc.startService()
        self.addCleanup(self.svc.stopService)

    async def ctl(self, *argv: str) -> tuple[int | None, str, str]:
        cmd = spawn(self, ["ganeti-maintd-ctl", "--socket", self.path, *argv])
        code = await cmd.exited()
        return code, cmd.out, cmd.err

    def test_prefixes_and_exit_statuses(self) -> defer.Deferred[None]:
        async def run() -> None:
            code, out, err = await self.ctl("cancel", "aaaa")
            self.assertEqual(code, ctl.EXIT_REFUSED)
            self.assertEqual(out, "")
            self.assertIn("aaaa is ambiguous", err)
            self.assertIn("aaaa1111, aaaa2222", err)
            self.assertEqual(self.store.commits, 0)
            code, out, err = await self.ctl("cancel", "aaaa2")
            self.assertEqual((code, out), (0, "Incident aaaa2222 canceled.\n"), err)
            inc = self.store.state.incident("aaaa2222")
            self.assertEqual(inc.status if inc else None, RepairStatus.CANCELED)
            code, out, err = await self.ctl("forget", "b")
            self.assertEqual((code, out), (0, "Incident bbbb3333 forgotten.\n"), err)
            self.assertIsNone(self.store.state.incident("bbbb3333"))
            code, out, err = await self.ctl("show", "zzz")
            self.assertEqual(code, ctl.EXIT_REFUSED)
            self.assertIn("no incident zzz", err)

        return defer.Deferred.fromCoroutine(run())

    def test_show_without_rapi_says_unknown(self) -> defer.Deferred[None]:
        async def run() -> None:
            self.store.state = state("cccc")
            self.store.state = self.store.state.with_incident(
                self.store.state.incidents[0].changed(1.0, jobs=(41, 42)))
            code, out, err = await self.ctl("show", "cc")
            self.assertEqual(code, 0, err)
            self.assertRegex(out, r"(?m)^Incident +cccc$")
            self.assertRegex(out, r"(?m)^ +41 +unknown")
            code, out, err = await self.ctl("--json", "show", "cccc")
            self.assertEqual(code, 0, err)
            doc = json.loads(out)
            self.assertEqual([j["id"] for j in doc["job-details"]], [41, 42])
            self.assertNotIn("tag-set", doc, "a pending incident has no tag yet")

        return defer.Deferred.fromCoroutine(run())

    def test_round_now_without_round_service_is_refused(self) -> defer.Deferred[None]:
        async def run() -> None:
            code, _, err = await self.ctl("round-now")
            self.assertEqual(code, ctl.EXIT_REFUSED)
            self.assertIn("no round service", err)

        return defer.Deferred.fromCoroutine(run())

    def test_usage_errors_and_unreachable(self) -> defer.Deferred[None]:
        async def run() -> None:
            for argv in (["bogus"], ["show"], ["--no-such-flag", "list"], []):
                code, out, err = await self.ctl(*argv)
                self.assertEqual(code, 2, argv)
                self.assertEqual(out, "", argv)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertRegex(err, r"\(see ganeti-maintd-ctl( show)? --help\)\n$")
            cmd = spawn(self, ["ganeti-maintd-ctl", "--socket", self.path + ".gone", "list"])
            self.assertEqual(await cmd.exited(), ctl.EXIT_UNREACHABLE)
            self.assertIn("cannot connect", cmd.err)
            helped = spawn(self, ["ganeti-maintd-ctl", "--help"])
            self.assertEqual(await helped.exited(), 0)
            for word in ("show", "round-now", "0 done", "1 refused", "2 usage error",
                         "3 daemon not reachable"):
                self.assertIn(word, " ".join(helped.out.split()))

        return defer.Deferred.fromCoroutine(run())


class DaemonDetailTests(TestCase):
    """The whole daemon on its simulated cluster: /1/status/UUID, show, round-now."""

    timeout = 180

    def test_one_incident_with_its_jobs(self) -> defer.Deferred[None]:
        async def run() -> None:
            spec = scenario([drbd("a1", "n2", "n3"), drbd("b1", "n5", "n2")], {"n2": EVACUATE})
            d = Daemon(self, spec)
            self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
            await d.start()
            pool = HTTPConnectionPool(reactor, persistent=False)
            base = f"http://127.0.0.1:{d.http_port}"
            [inc] = d.incidents("n2")
            # not final yet: no tag-set / tag-job claims
            status = await (await treq.get(f"{base}/1/status", pool=pool)).json()
            self.assertNotIn("tag-set", status[0])
            await d.rounds_until(lambda: d.incidents("n2")[0].status == RepairStatus.COMPLETED)
            await d.wait_jobs_done()
            done = d.incidents("n2")[0]
            r = await treq.get(f"{base}/1/status/{inc.uuid}", pool=pool)
            self.assertEqual(r.code, 200)
            body = await r.json()
            self.assertEqual(body["uuid"], inc.uuid)
            self.assertEqual(body["repair-status"], "completed")
            self.assertIn("tag-set", body)
            details = body["job-details"]
            self.assertEqual([j["id"] for j in details], list(done.jobs))
            self.assertTrue(all(j["status"] == "success" for j in details), details)
            self.assertEqual(details[0]["summary"], ["NODE_SET_PARAMS(n2)"])
            self.assertEqual(details[-1]["summary"], ["TAGS_SET"])
            r = await treq.get(f"{base}/1/status/no-such-uuid", pool=pool)
            self.assertEqual(r.code, 404)
            self.assertEqual(await r.json(), {"error": "no such incident", "uuid": "no-such-uuid"})
            # the same through the ctl, by prefix
            cmd = spawn(self, ["ganeti-maintd-ctl", "--socket", d.ctl_socket, "show", inc.uuid[:8]])
            self.assertEqual(await cmd.exited(), 0, cmd.transcript())
            self.assertRegex(cmd.out, rf"(?m)^Incident +{inc.uuid}$")
            self.assertRegex(cmd.out, rf"(?m)^ +{done.jobs[0]} +success +NODE_SET_PARAMS\(n2\)")
            # round-now: the round service (schedule: an hour) starts one at once
            before = d.daemon.rounds.rounds
            cmd = spawn(self, ["ganeti-maintd-ctl", "--socket", d.ctl_socket, "round-now"])
            self.assertEqual(await cmd.exited(), 0, cmd.transcript())
            self.assertEqual(cmd.out, f"Round {before + 1} started.\n")
            self.assertEqual(d.daemon.rounds.rounds, before + 1)

        return defer.Deferred.fromCoroutine(run())
