"""State replication: the agent's store, the daemon's choice at start, the push after commits."""

from __future__ import annotations

import json
import os
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
from maintd.daemon.replication import Replication
from maintd.daemon.state import STATE_SCHEMA_VERSION, Action, Incident, MaintState
from maintd.daemon.store import StateStore
from maintd.decide.replica import choose, payload

KEY = b"0123456789abcdef0123456789abcdef01234567\n"
OTHER = b"fedcba9876543210fedcba9876543210fedcba98\n"
NOW = 1_800_000_000.0
INC = Incident(uuid="11111111-2222-4333-8444-555555555555", node="u-n3", node_name="n3",
               original={"status": "evacuate"}, action=Action.EVACUATE, jobs=(4, 5))


def state(serial: int, jobs: tuple[int, ...] = (5,)) -> MaintState:
    return attrs.evolve(MaintState(incidents=(INC,), jobs=jobs, evacuated=("x1",)),
                        serial=serial)


def envelope(st: MaintState, key: bytes = KEY, when: float = NOW, **over: Any) -> bytes:
    return signing.dumps({**payload(st), **over}, key, when)


def logged(events: list[dict[str, Any]]) -> str:
    return "\n".join(formatEvent(e) for e in events)


class AgentStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(os.path.join(self.dir, f))
                                 for f in os.listdir(self.dir)])

    def store(self) -> ReplicaStore:
        return ReplicaStore(self.dir, KEY, lambda: NOW + 5)

    def test_newest_serial_kept_durably(self) -> None:
        s = self.store()
        self.assertEqual(s.put(envelope(state(3)), "t"), (200, {"stored": 3}))
        self.assertEqual(s.put(envelope(state(2)), "t"), (409, {"kept": 3}))
        self.assertEqual(s.put(envelope(state(3)), "t"), (409, {"kept": 3}))
        again = self.store()  # the agent restarted
        self.assertEqual(again.serial, 3)
        self.assertEqual(again.envelope, envelope(state(3)), "handed back unchanged")
        self.assertEqual(again.put(envelope(state(9)), "t")[0], 200)
        self.assertEqual(self.store().serial, 9)

    def test_bad_input_refused_with_a_log_line(self) -> None:
        s = self.store()
        cases = [
            (envelope(state(5), key=OTHER), 403, "signature does not match"),
            (envelope(state(5), when=NOW - 3600), 403, "outside the 300s window"),
            (signing.dumps({"serial": 5}, KEY, NOW), 400, "schema"),
            (b"{not json", 400, "replica from"),
            (json.dumps(payload(state(5))).encode(), 403, "not signed"),
        ]
        for body, code, text in cases:
            with self.subTest(text=text), capturedLogs() as events:
                got, answer = s.put(body, "replica from 198.18.1.1")
                self.assertEqual(got, code)
                self.assertIn(text, answer["error"])
                self.assertEqual(len(events), 1)
                self.assertIn("replica refused", logged(events))
        self.assertIsNone(s.envelope)
        self.assertFalse(os.listdir(self.dir))

    def test_corrupt_file_ignored_at_start(self) -> None:
        with open(os.path.join(self.dir, "replica.json"), "wb") as f:
            f.write(envelope(state(4), key=OTHER))
        with capturedLogs() as events:
            s = self.store()
        self.assertIsNone(s.envelope)
        self.assertIn("ignored", logged(events))

    def test_http(self) -> None:
        res = AgentResource(key=KEY, data=lambda: ({"status": "Ok"}, NOW), repairs=None,
                            wallclock=lambda: NOW, replica=ReplicaStore(None, KEY, lambda: NOW))
        http = StubTreq(res)

        async def go() -> None:
            r = await http.get("http://127.0.0.1:1817/1/replica")
            self.assertEqual(r.code, 404)
            r = await http.put("http://127.0.0.1:1817/1/replica", data=envelope(state(7)))
            self.assertEqual((r.code, await r.json()), (200, {"stored": 7}))
            r = await http.get("http://127.0.0.1:1817/1/replica")
            self.assertEqual(await r.content(), envelope(state(7)))
            r = await http.put("http://127.0.0.1:1817/1/replica",
                               data=envelope(state(8), key=OTHER))
            self.assertEqual(r.code, 403)

        self.successResultOf(defer.Deferred.fromCoroutine(go()))


class ChooseTests(SynchronousTestCase):
    def test_newest_valid_copy_newer_than_local(self) -> None:
        copies = {"n1": envelope(state(4)), "n2": envelope(state(9, jobs=(5, 6))),
                  "n3": envelope(state(7))}
        c = choose(copies, KEY, NOW + 86400, local_serial=0)  # copies are old: no window
        self.assertEqual((c.serial, c.node), (9, "n2"))
        assert c.state is not None
        self.assertEqual(c.state.jobs, (5, 6))
        self.assertEqual(c.state.incident(INC.uuid), INC)
        self.assertEqual(c.notes, ())

    def test_local_state_newer_or_equal_is_kept(self) -> None:
        c = choose({"n1": envelope(state(4))}, KEY, NOW, local_serial=4)
        self.assertIsNone(c.state)
        self.assertIn("not newer", c.kept)
        self.assertEqual(c.notes, ())
        self.assertIsNone(choose({}, KEY, NOW, local_serial=0).state)

    def test_bad_signature_and_future_schema_ignored_with_a_note(self) -> None:
        copies = {
            "n1": envelope(state(50), key=OTHER),
            "n2": envelope(state(60), schema=STATE_SCHEMA_VERSION + 1),
            "n3": envelope(state(70), state={"schema": 1, "incidents": "garbage"}),
            "n4": b"\xff garbage",
            "n5": envelope(state(3)),
        }
        c = choose(copies, KEY, NOW, local_serial=0)
        self.assertEqual((c.serial, c.node), (3, "n5"), "only the valid copy counts")
        text = "\n".join(c.notes)
        self.assertIn("n1 ignored: bad signature", text)
        self.assertIn(f"n2 ignored: written with state schema {STATE_SCHEMA_VERSION + 1}", text)
        self.assertIn("n3 ignored: its state does not parse", text)
        self.assertIn("n4 ignored", text)


def node(name: str, **kw: Any) -> Node:
    return Node(name=name, uuid=f"u-{name}", group="g", pip="127.0.0.1", **kw)


class PushTests(SynchronousTestCase):
    def test_each_commit_pushed_and_newer_agent_serial_raises_ours(self) -> None:
        agent = ReplicaStore(None, KEY, lambda: NOW)
        res = AgentResource(key=KEY, data=lambda: ({"status": "Ok"}, NOW), repairs=None,
                            wallclock=lambda: NOW, replica=agent)
        client = ReplicaClient(task.Clock(), port=1817, http=StubTreq(res))
        d = tempfile.mkdtemp()
        store = StateStore.open(d)
        self.addCleanup(store.close)
        rep = Replication(store, client, KEY, wallclock=lambda: NOW)
        store.add_listener(rep.changed)
        cluster = Cluster(name="c", master="n1", groups={"g": Group("g", "g")},
                          nodes={"n1": node("n1", master=True), "n2": node("n2")})
        rep.fetched = True
        rep.set_nodes(cluster)
        self.assertEqual([n.name for n in rep.nodes], ["n1"], "master candidates only")
        store.commit(MaintState(jobs=(1,)))
        self.successResultOf(defer.Deferred.fromCoroutine(rep.wait()))
        self.assertEqual(agent.serial, 1)
        # an earlier master's copy with a higher serial on the agent
        agent.put(envelope(state(40)), "t")
        store.commit(MaintState(jobs=(1, 2)))
        self.successResultOf(defer.Deferred.fromCoroutine(rep.wait()))
        self.assertEqual(store.state.serial, 41)
        self.assertEqual(agent.serial, 41)
        doc, _ = signing.loads(agent.envelope or b"", KEY, NOW, source="t")
        self.assertEqual(doc["state"]["jobs"], [1, 2], "our newest state, not the old one")
