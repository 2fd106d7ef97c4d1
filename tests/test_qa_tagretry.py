"""A finalized incident whose tag job fails is kept and tagged again (QA bug C).

End to end: the real daemon against the embedded simulator, one round at a
time (see tests.test_round_e2e).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.daemon.state import TAG_FAILED, Incident, MaintState, RepairStatus
from maintd.decide import incidents as I
from tests.test_round_e2e import Daemon, scenario
from tests.test_round_incidents import incident, mk_cluster, nd

EVACUATE_FAILOVER = {"status": "evacuate-failover", "command": None, "details": ["disk dying"]}
PLAIN = {"name": "p1", "primary": "n2", "disk_template": "plain", "memory": 512}


class TagJobFailureTests(TestCase):
    timeout = 180

    def test_failed_tag_job_is_retried_not_forgotten(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._failed_tag_job())

    async def _failed_tag_job(self) -> None:
        # n2 is already drained: its incident fails in the first round
        spec = scenario([PLAIN], {"n2": EVACUATE_FAILOVER}, n2={"drained": True})
        d = Daemon(self, spec)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
        d.sim.sim.set_fail_next(1)  # the failure tag job will fail
        await d.start()  # round 1
        [inc] = d.incidents("n2")
        self.assertEqual(inc.status, RepairStatus.FAILED)
        tag = TAG_FAILED + inc.uuid
        [first] = inc.jobs
        await d.wait_jobs_done()
        self.assertEqual(d.sim.sim.jobs.jobs[first].status, "error")
        self.assertNotIn(tag, d.node("n2").tags)

        await d.round()  # sees the failed tag job: tags again, forgets nothing
        [same] = d.incidents("n2")
        self.assertEqual(same.uuid, inc.uuid)
        self.assertEqual(same.status, RepairStatus.FAILED)
        self.assertEqual(len(same.jobs), 2, "the new tag job is recorded on the incident")
        retry = same.jobs[-1]
        self.assertIn(retry, d.state.jobs)
        tag_ops = [op for jid, op in d.ops() if op["OP_ID"] == "OP_TAGS_SET"]
        self.assertEqual([op["tags"] for op in tag_ops], [[tag], [tag]])
        await d.wait_jobs_done()
        self.assertIn(tag, d.node("n2").tags)

        await d.round()
        await d.round()
        [same] = d.incidents("n2")
        self.assertEqual(same.uuid, inc.uuid)
        self.assertEqual(same.jobs, (first, retry), "no further tag jobs once it is set")
        self.assertEqual(d.state.jobs, ())

        # the operator acknowledges: forgotten; n2 still reports: a fresh incident
        await d.operator_remove_tag("n2", tag)
        await d.round()
        uuids = [i.uuid for i in d.incidents("n2")]
        self.assertNotIn(inc.uuid, uuids)
        self.assertEqual(len(uuids), 1)

    def test_tag_job_failing_every_round_keeps_one_incident(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._failing_every_round())

    async def _failing_every_round(self) -> None:
        spec = scenario([PLAIN], {"n2": EVACUATE_FAILOVER}, n2={"drained": True})
        d = Daemon(self, spec)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
        d.sim.sim.set_fail_next(1)
        await d.start()
        [inc] = d.incidents("n2")
        for _ in range(3):
            await d.wait_jobs_done()
            d.sim.sim.set_fail_next(1)
            await d.round()
            uuids: list[Any] = [i.uuid for i in d.incidents("n2")]
            self.assertEqual(uuids, [inc.uuid])
        self.assertEqual(len(d.incidents("n2")[0].jobs), 4, "one tag job per round")


class TagBookkeepingTests(SynchronousTestCase):
    """The pure side: which finalized incidents are forgotten, which tagged again."""

    def failed(self) -> Incident:
        inc = incident("a", status=RepairStatus.NOTED)
        return I.failed(MaintState(incidents=(inc,)), inc, "broken", 7, 1.0).incidents[0]

    def test_a_tag_never_set_is_no_acknowledgement(self) -> None:
        inc = attrs.evolve(self.failed(), tag_job=None)  # its job failed
        state = MaintState(incidents=(inc,))
        cluster = mk_cluster([nd("a")], [])
        new, gone = I.cleanup(state, cluster)
        self.assertEqual((new.incidents, gone), ((inc,), []))
        self.assertEqual(I.tags_due(state, cluster), [inc])

    def test_tag_job_running_is_not_due(self) -> None:
        inc = self.failed()
        state = MaintState(incidents=(inc,), jobs=(7,))
        self.assertEqual(I.tags_due(state, mk_cluster([nd("a")], [])), [])

    def test_tag_seen_on_node_then_removed_forgets(self) -> None:
        inc = attrs.evolve(self.failed(), tag_job=None)
        state = MaintState(incidents=(inc,))
        tagged = mk_cluster([nd("a", tags={inc.tag})], [])
        state, gone = I.cleanup(state, tagged)
        self.assertEqual(gone, [])
        self.assertEqual(I.tags_due(state, tagged), [])
        state, gone = I.cleanup(state, mk_cluster([nd("a")], []))
        self.assertEqual(state.incidents, ())
        self.assertEqual([uuid for uuid, _ in gone], [inc.uuid])

    def test_tag_job_success_and_failure(self) -> None:
        inc = self.failed()
        state = MaintState(incidents=(inc,), jobs=(7,))
        ok, [done] = I.tag_job_ended(state, 7, True)
        self.assertTrue(done.tag_set)
        bad, [again] = I.tag_job_ended(state, 7, False)
        self.assertEqual((again.tag_set, again.tag_job), (False, None))
        retried = I.tag_submitted(bad, again, 9, 2.0).incidents[0]
        self.assertEqual((retried.tag_job, retried.jobs), (9, (7, 9)))

    def test_state_of_an_older_version_forgets_as_before(self) -> None:
        doc = self.failed().to_json()
        del doc["tag-job"], doc["tag-set"]
        old = Incident.from_json(doc)
        new, gone = I.cleanup(MaintState(incidents=(old,)), mk_cluster([nd("a")], []))
        self.assertEqual((new.incidents, len(gone)), ((), 1))

    def test_wire_round_trip(self) -> None:
        inc = self.failed()
        self.assertEqual(Incident.from_json(inc.to_json()), inc)
        doc = inc.to_json()
        doc["tag-set"] = "yes"
        self.assertRaises(ValueError, Incident.from_json, doc)
