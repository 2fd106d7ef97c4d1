"""The reconcile and replica steps' I/O side with fakes: master check, tags, replica at start."""

from __future__ import annotations

import tempfile
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from maintd.agent.http import AgentResource
from maintd.agent.replica import ReplicaStore
from maintd.cluster.model import Cluster, Group, Node
from maintd.cluster.replica import ReplicaClient
from maintd.common import signing
from maintd.daemon.mastership import Mastership
from maintd.daemon.replication import Replication
from maintd.daemon.round import RoundStopped
from maintd.daemon.state import STATE_SCHEMA_VERSION, TAG_READY, MaintState
from maintd.daemon.steps.reconcile import check_rapi_master, reconcile_tags_step
from maintd.daemon.steps.replica import replica_start_step
from maintd.daemon.store import StateStore
from maintd.decide.replica import payload

KEY = b"0123456789abcdef0123456789abcdef01234567\n"
NOW = 1_800_000_000.0


def node(name: str, **kw: Any) -> Node:
    return Node(name=name, uuid=f"u-{name}", group="g", pip="127.0.0.1", **kw)


CLUSTER = Cluster(name="c", master="n1", groups={"g": Group("g", "g")},
                  nodes={"n1": node("n1", master=True),
                         "n2": node("n2", master_candidate=True,
                                    tags={TAG_READY + "garbage"})})


class FakeRapi:
    def __init__(self, master: str) -> None:
        self.master = master

    async def info(self) -> dict[str, Any]:
        return {"master": self.master}

    async def node_names(self) -> list[str]:
        return list(CLUSTER.nodes)

    async def load_cluster(self) -> Cluster:
        return CLUSTER


@attrs.define
class Ctx:
    rapi: Any
    state: MaintState = MaintState()
    config: Any = attrs.field(factory=lambda: type("C", (), {"simulate": False})())
    mastership: Any = None
    submitting: bool = True
    cluster: Any = None
    mond: Any = None
    replica: Any = None
    now: float = NOW
    notes: list[dict[str, Any]] = attrs.field(factory=list)

    store: Any = None

    async def commit(self, new: MaintState) -> None:
        if self.store is not None:
            self.store.commit(new)
        self.state = new


def run(coro: Any) -> Any:
    return defer.Deferred.fromCoroutine(coro)


def text(events: list[dict[str, Any]]) -> str:
    return "\n".join(formatEvent(e) for e in events)


class MasterCheckTests(SynchronousTestCase):
    def test_another_node_is_master_stops_and_exits_11(self) -> None:
        exits: list[int] = []
        ms = Mastership(hostname="n2.", verified=False, exit=exits.append)
        ctx = Ctx(FakeRapi("n1"), mastership=ms)
        self.failureResultOf(run(check_rapi_master(ctx)), RoundStopped)
        self.assertEqual(exits, [11])
        self.assertTrue(ms.lost)
        self.assertFalse(ctx.submitting)

    def test_we_are_master_or_not_a_node_name(self) -> None:
        for me in ("N1", "localhost.example"):
            exits: list[int] = []
            ms = Mastership(hostname=me, verified=False, exit=exits.append)
            self.successResultOf(run(check_rapi_master(Ctx(FakeRapi("n1"), mastership=ms))))
            self.assertEqual((exits, ms.lost), ([], False), me)


class TagStepTests(SynchronousTestCase):
    def test_malformed_tag_reported_not_acted_on(self) -> None:
        ctx = Ctx(FakeRapi("n1"), cluster=CLUSTER)
        with capturedLogs() as events:
            self.successResultOf(run(reconcile_tags_step(ctx)))
        self.assertEqual(ctx.state, MaintState())
        self.assertIn("node n2: tag 'maintd:repairready:garbage': 'garbage' is not an incident "
                      "uuid; not acted on", text(events))
        self.assertEqual(ctx.notes[0]["reconcile"], "malformed tag")


class ReplicaStartTests(SynchronousTestCase):
    def start(self, envelope: bytes, local: MaintState) -> tuple[Ctx, str]:
        agent = ReplicaStore(None, KEY, lambda: NOW)
        agent.envelope, agent.serial = envelope, 99  # as an agent holding it
        res = AgentResource(key=KEY, data=lambda: ({"status": "Ok"}, NOW), repairs=None,
                            wallclock=lambda: NOW, replica=agent)
        store = StateStore.open(tempfile.mkdtemp())
        self.addCleanup(store.close)
        store.commit(local)
        rep = Replication(store, ReplicaClient(task.Clock(), port=1817, http=StubTreq(res)),
                          KEY, wallclock=lambda: NOW)
        store.add_listener(rep.changed)
        ctx = Ctx(FakeRapi("n1"), state=store.state, replica=rep, store=store)
        with capturedLogs() as events:
            self.successResultOf(run(replica_start_step(ctx)))
        self.assertTrue(rep.fetched)
        self.successResultOf(run(rep.wait()))
        # our state went to the agent afterwards, with a serial above its copy's
        self.assertGreater(agent.serial, 99)
        return ctx, text(events)

    def test_takes_newer_copy(self) -> None:
        st = attrs.evolve(MaintState(jobs=(5,), evacuated=("x",)), serial=7)
        ctx, _ = self.start(signing.dumps(payload(st), KEY, NOW - 3600), MaintState())
        self.assertEqual((ctx.state.jobs, ctx.state.evacuated), ((5,), ("x",)))
        self.assertEqual(ctx.notes[0]["replica"], "taken")

    def test_bad_signature_and_future_schema_ignored_with_a_log_line(self) -> None:
        st = attrs.evolve(MaintState(jobs=(5,)), serial=7)
        other = b"fedcba9876543210fedcba9876543210fedcba98\n"
        for env, want in [
            (signing.dumps(payload(st), other, NOW), "ignored: bad signature"),
            (signing.dumps({**payload(st), "schema": STATE_SCHEMA_VERSION + 1}, KEY, NOW),
             f"ignored: written with state schema {STATE_SCHEMA_VERSION + 1}"),
        ]:
            with self.subTest(want=want):
                ctx, logged = self.start(env, MaintState())
                self.assertEqual(ctx.state, MaintState(), "nothing taken")
                self.assertIn(f"replica from the agent on n1 {want}", logged)
