"""Pure reconciliation (maintd.decide.reconcile): Ganeti's queue and tags against the state."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.model import Cluster, Group, Node
from maintd.daemon.state import TAG_FAILED, TAG_READY, Action, Incident, MaintState, RepairStatus
from maintd.decide import reconcile as R
from maintd.decide.reason import format_reason, report_digest

U1 = "11111111-2222-4333-8444-555555555555"
U2 = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
REPORT = {"status": "evacuate", "command": None, "details": ["disk sda failing"]}
DIGEST = report_digest("u-n3", REPORT)


def node(name: str, **kw: Any) -> Node:
    return Node(name=name, uuid=f"u-{name}", group="default", **kw)


def cluster(*nodes: Node) -> Cluster:
    return Cluster(name="c", master="n1", groups={"default": Group("default", "g")},
                   nodes={n.name: n for n in nodes})


def job(jid: int, status: str, op: dict[str, Any], *, uuid: str = U1, digest: str = DIGEST,
        reason: str | None = None) -> dict[str, Any]:
    text = reason if reason is not None else format_reason("incident", uuid, digest)
    op = {**op, "reason": [["gnt:user", text, 1], ["gnt:opcode:x", f"job={jid};index=0", 2]]}
    return {"id": jid, "ops": [op], "status": status, "received_ts": [1000 + jid, 0]}


def drain(jid: int, status: str = "success", **kw: Any) -> dict[str, Any]:
    return job(jid, status, {"OP_ID": "OP_NODE_SET_PARAMS", "node_name": "n3", "drained": True},
               **kw)


def migrate(jid: int, status: str, inst: str = "i1", **kw: Any) -> dict[str, Any]:
    return job(jid, status, {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": inst}, **kw)


def tag(jid: int, status: str, tag: str, **kw: Any) -> dict[str, Any]:
    return job(jid, status, {"OP_ID": "OP_TAGS_SET", "kind": "node", "name": "n3",
                             "tags": [tag]}, **kw)


def queue(*docs: dict[str, Any]) -> list[R.QueueJob]:
    jobs, problems = R.parse_queue(list(docs))
    assert not problems, problems
    return jobs


def known(**kw: Any) -> Incident:
    base: dict[str, Any] = dict(uuid=U1, node="u-n3", node_name="n3", original=REPORT,
                                action=Action.EVACUATE, tag=TAG_READY + U1, digest=DIGEST)
    base.update(kw)
    return Incident(**base)


class ParseQueueTests(SynchronousTestCase):
    def test_not_ours_and_bad_entries(self) -> None:
        docs = [drain(1), migrate(2, "running", reason="maintd test"),
                migrate(3, "running", reason="maintd:1:incident:not-a-uuid:-"),
                "garbage", {"id": "x", "ops": []}, {"id": 9, "ops": None, "status": None}]
        jobs, problems = R.parse_queue(docs)
        self.assertEqual([j.id for j in jobs], [1], "unparseable reasons are not ours")
        self.assertEqual(len(problems), 2)
        self.assertIn("job entry 4", problems[0])
        self.assertEqual(R.parse_queue({"x": 1})[0], [])


class KnownIncidentTests(SynchronousTestCase):
    def test_running_job_the_state_lacks_is_adopted(self) -> None:
        st_ = MaintState(incidents=(known(status=RepairStatus.PENDING, jobs=(1,)),))
        res = R.reconcile_jobs(st_, queue(drain(1), migrate(2, "running")), 50.0)
        inc = res.state.incident(U1)
        assert inc is not None
        self.assertEqual(inc.jobs, (1, 2))
        self.assertEqual(res.state.jobs, (2,), "awaited, never submitted again")
        self.assertEqual(res.notes[0]["reconcile"], "applied")
        self.assertEqual(res.unknown, {})
        # a second pass changes nothing
        again = R.reconcile_jobs(res.state, queue(drain(1), migrate(2, "running")), 60.0)
        self.assertEqual(again.state, res.state)
        self.assertEqual(again.notes, ())

    def test_failed_job_is_awaited_so_the_incident_fails(self) -> None:
        st_ = MaintState(incidents=(known(status=RepairStatus.PENDING, jobs=(1,)),))
        res = R.reconcile_jobs(st_, queue(drain(1), migrate(2, "error")), 50.0)
        self.assertEqual(res.state.jobs, (2,))

    def test_tag_job_completes_or_fails(self) -> None:
        st_ = MaintState(incidents=(known(status=RepairStatus.PENDING, jobs=(1, 2)),))
        res = R.reconcile_jobs(st_, queue(drain(1), migrate(2, "success"),
                                          tag(3, "success", TAG_READY + U1)), 50.0)
        inc = res.state.incident(U1)
        assert inc is not None
        self.assertEqual((inc.status, inc.tag_job, inc.tag_set), (RepairStatus.COMPLETED, 3, True))
        self.assertEqual(res.state.jobs, ())
        res = R.reconcile_jobs(st_, queue(drain(1), migrate(2, "error"),
                                          tag(3, "running", TAG_FAILED + U1)), 50.0)
        inc = res.state.incident(U1)
        assert inc is not None
        self.assertEqual((inc.status, inc.tag, inc.tag_job, inc.tag_set),
                         (RepairStatus.FAILED, TAG_FAILED + U1, 3, False))
        self.assertEqual(res.state.jobs, (3,), "the failed job is not failed a second time")

    def test_failed_tag_job_is_due_again(self) -> None:
        st_ = MaintState(incidents=(known(status=RepairStatus.PENDING, jobs=(1,)),))
        res = R.reconcile_jobs(st_, queue(drain(1), tag(2, "error", TAG_READY + U1)), 50.0)
        inc = res.state.incident(U1)
        assert inc is not None
        self.assertEqual((inc.status, inc.tag_job), (RepairStatus.COMPLETED, None))

    def test_harep_and_balance_jobs_adopted_when_unfinished(self) -> None:
        docs = [migrate(5, "running", reason=format_reason("balance", "i1")),
                migrate(6, "success", reason=format_reason("balance", "i2")),
                migrate(7, "queued", reason=format_reason("harep", "i3"))]
        res = R.reconcile_jobs(MaintState(harep={"r": {"jobs": [7]}}), queue(*docs), 1.0)
        # every unfinished job of ours is awaited; the harep one was known already
        self.assertEqual(res.state.jobs, (5, 7))
        self.assertEqual([n["job"] for n in res.notes], [5])


class RebuildTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = cluster(node("n1", master=True), node("n2"), node("n3", drained=True))

    def rebuild(self, docs: list[dict[str, Any]], reports: dict[str, Any] | None = None,
                c: Cluster | None = None) -> R.Result:
        first = R.reconcile_jobs(MaintState(), queue(*docs), 70.0)
        self.assertEqual(first.state.jobs, tuple(d["id"] for d in docs
                                                 if d["status"] in R.PENDING))
        return R.rebuild(first.state, first.unknown, c or self.cluster,
                         {"n3": REPORT} if reports is None else reports, 70.0)

    def test_same_uuid_and_report_running_job_adopted(self) -> None:
        res = self.rebuild([drain(1), migrate(2, "running")])
        inc = res.state.incident(U1)
        assert inc is not None
        self.assertEqual((inc.node, inc.node_name, inc.status, inc.jobs),
                         ("u-n3", "n3", RepairStatus.PENDING, (1, 2)))
        self.assertEqual(dict(inc.original), REPORT, "the failure the node reports keeps its uuid")
        self.assertEqual(inc.action, Action.EVACUATE)
        self.assertEqual(inc.ctime, 1001)
        self.assertEqual(res.state.jobs, (2,))
        self.assertEqual(res.notes[0]["reconcile"], "rebuilt")

    def test_node_found_by_digest_alone(self) -> None:
        res = self.rebuild([migrate(2, "running")], reports={"n2": {"status": "Ok"},
                                                             "n3": REPORT})
        inc = res.state.incident(U1)
        assert inc is not None
        self.assertEqual(inc.node_name, "n3")

    def test_other_report_now(self) -> None:
        other = {"status": "evacuate-failover", "details": ["something else"]}
        res = self.rebuild([drain(1), migrate(2, "running")], reports={"n3": other})
        inc = res.state.incident(U1)
        assert inc is not None
        self.assertEqual(dict(inc.original), {}, "not tied to a different failure")
        self.assertEqual(inc.digest, DIGEST)
        # finished jobs only and another report: nothing to continue
        res = self.rebuild([drain(1), migrate(2, "success")], reports={"n3": other})
        self.assertIsNone(res.state.incident(U1))
        self.assertEqual(res.notes[0]["reconcile"], "not rebuilt")

    def test_acknowledged_incident_stays_forgotten(self) -> None:
        res = self.rebuild([drain(1), tag(2, "success", TAG_READY + U1)])
        self.assertIsNone(res.state.incident(U1))
        self.assertIn("acknowledged", res.notes[0]["why"])
        tagged = cluster(node("n1"), node("n3", drained=True, tags={TAG_READY + U1}))
        res = self.rebuild([drain(1), tag(2, "success", TAG_READY + U1)], c=tagged)
        inc = res.state.incident(U1)
        assert inc is not None
        self.assertEqual((inc.status, inc.tag_set, inc.tag_job), (RepairStatus.COMPLETED, True, 2))

    def test_failed_job_rebuilt_active_and_awaited(self) -> None:
        res = self.rebuild([drain(1), migrate(2, "error")])
        inc = res.state.incident(U1)
        assert inc is not None
        self.assertEqual(inc.status, RepairStatus.PENDING)
        self.assertEqual(res.state.jobs, (2,), "the jobs step fails it, one failure tag")

    def test_unknown_node(self) -> None:
        res = self.rebuild([migrate(2, "running")], reports={})
        self.assertIsNone(res.state.incident(U1))
        self.assertEqual(res.state.jobs, (2,), "still awaited")

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from(["queued", "running", "success", "error"]), min_size=1,
                    max_size=5), st.sets(st.integers(0, 4)))
    def test_no_job_lost_and_idempotent(self, statuses: list[str], forget: set[int]) -> None:
        """Whatever part of the state is lost, every unfinished job of ours ends up
        awaited and on its incident, and reconciling twice changes nothing more."""
        docs = [drain(1)] + [migrate(i + 2, s, inst=f"i{i}") for i, s in enumerate(statuses)]
        q = queue(*docs)
        full = known(status=RepairStatus.PENDING, jobs=tuple(d["id"] for d in docs))
        lost = {d["id"] for i, d in enumerate(docs) if i in forget}
        partial = MaintState(incidents=(full.changed(0, jobs=tuple(
            j for j in full.jobs if j not in lost)),))
        for start in (partial, MaintState()):
            res = R.reconcile_jobs(start, q, 5.0)
            res2 = R.rebuild(res.state, res.unknown, self.cluster, {"n3": REPORT}, 5.0)
            inc = res2.state.incident(U1)
            assert inc is not None
            running = {d["id"] for d in docs if d["status"] in R.PENDING}
            self.assertLessEqual(running, set(res2.state.jobs))
            self.assertLessEqual(running, set(inc.jobs))
            again = R.reconcile_jobs(res2.state, q, 6.0)
            self.assertEqual(again.state, res2.state)


class TagTests(SynchronousTestCase):
    def test_tag_of_unknown_incident_rebuilt_finalized(self) -> None:
        c = cluster(node("n1"), node("n3", tags={TAG_FAILED + U2, "other"}))
        res = R.rebuild_from_tags(MaintState(), c, {"n3": REPORT}, 9.0)
        inc = res.state.incident(U2)
        assert inc is not None
        self.assertEqual((inc.status, inc.tag, inc.tag_set, inc.node_name),
                         (RepairStatus.FAILED, TAG_FAILED + U2, True, "n3"))
        self.assertEqual(dict(inc.original), REPORT)

    def test_malformed_uuid_reported_not_acted_on(self) -> None:
        c = cluster(node("n3", tags={TAG_READY + "not-a-uuid", TAG_FAILED + "1234"}))
        res = R.rebuild_from_tags(MaintState(), c, {}, 9.0)
        self.assertEqual(res.state, MaintState())
        self.assertEqual(sorted(n["tag"] for n in res.notes),
                         sorted([TAG_READY + "not-a-uuid", TAG_FAILED + "1234"]))
        self.assertTrue(all(n["reconcile"] == "malformed tag" for n in res.notes))

    def test_known_incident_untouched(self) -> None:
        st_ = MaintState(incidents=(known(status=RepairStatus.COMPLETED),))
        c = cluster(node("n3", tags={TAG_READY + U1}))
        self.assertEqual(R.rebuild_from_tags(st_, c, {}, 9.0).state, st_)
