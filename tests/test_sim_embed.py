"""The embedded simulator over real sockets on 127.0.0.0/8 (HTTPS RAPI, per-node mond)."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from maintd.rapi.client import RapiClient
from maintd.sim.embed import EmbeddedSimulator, free_port

from .test_sim_jobs import SCENARIO


class EmbeddedTestBase(TestCase):
    plain_http = False

    def setUp(self) -> Any:
        self.workdir = self.mktemp()
        os.makedirs(self.workdir)
        path = os.path.join(self.workdir, "scenario.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(SCENARIO, f)
        self.clock = task.Clock()
        self.sim = EmbeddedSimulator(
            reactor,
            os.path.join(self.workdir, "sim"),
            scenario=path,
            job_seconds=0,
            mond_port=free_port(),
            plain_http=self.plain_http,
            clock=self.clock,
        )
        self.sim.startService()
        self.addCleanup(self.sim.stopService)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.addCleanup(self.pool.closeCachedConnections)

    async def mond(self, node: str, path: str) -> tuple[int, bytes]:
        pip = self.sim.cluster.nodes[node].pip
        resp = await self.http.get(f"http://{pip}:{self.sim.mond_port}{path}", timeout=5)
        return resp.code, await resp.content()


class ConstructionTests(EmbeddedTestBase):
    def test_files_and_url_known_after_construction(self) -> None:
        self.assertTrue(self.sim.rapi_url.startswith("https://127.0.0.1:"))
        for path in (self.sim.rapi_password_file, self.sim.rapi_cert):
            assert path is not None
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(self.sim.rapi_cert, encoding="ascii") as f:
            self.assertIn("BEGIN CERTIFICATE", f.read())

    def test_each_node_has_its_own_loopback_address(self) -> None:
        pips = [n.pip for n in self.sim.cluster.nodes.values()]
        self.assertEqual(len(set(pips)), len(pips))
        for pip in pips:
            self.assertTrue(pip.startswith("127.") and not pip.startswith("127.0.0."))


class RapiClientTests(EmbeddedTestBase):
    """maintd's own RAPI client, pinned to the simulator's certificate."""

    def client(self) -> RapiClient:
        client = RapiClient.create(
            self.sim.rapi_url,
            reactor=reactor,
            user=self.sim.rapi_user,
            password_file=self.sim.rapi_password_file,
            cert=self.sim.rapi_cert,
            timeout=5,
        )
        self.addCleanup(lambda: defer.ensureDeferred(client.close()))
        return client

    def test_load_cluster_migrate_and_tags(self) -> defer.Deferred[None]:
        async def go() -> None:
            client = self.client()
            cluster = await client.load_cluster()
            self.assertEqual(set(cluster.nodes), {"n1", "n2", "n3", "n4", "n5"})
            self.assertEqual(len(cluster.instances), 5)
            self.assertEqual(cluster.nodes["n3"].pip, self.sim.cluster.nodes["n3"].pip)
            job = await client.migrate_instance("d1", reason="maintd test")
            self.clock.advance(0)
            self.clock.advance(0)
            result = (await client.wait_jobs([job], timeout=5))[job]
            self.assertTrue(result.ok, result)
            tag_job = await client.add_tags("node", "n2", ["maintd:repairready:x"], "maintd")
            self.clock.advance(0)
            self.clock.advance(0)
            await client.wait_jobs([tag_job], timeout=5)
            after = await client.load_cluster()
            self.assertEqual(after.instances["d1"].primary, "n3")
            self.assertEqual(after.instances["d1"].secondaries, ("n2",))
            self.assertEqual(after.nodes["n2"].tags, frozenset({"maintd:repairready:x"}))

        return defer.ensureDeferred(go())


class MondTests(EmbeddedTestBase):
    plain_http = True

    def test_reports_served_at_node_address(self) -> defer.Deferred[None]:
        async def go() -> None:
            code, body = await self.mond("n2", "/1/list/collectors")
            self.assertEqual(code, 200)
            self.assertIn(["diagnose", "node", 1], json.loads(body))
            code, body = await self.mond("n2", "/1/report/node/diagnose")
            report = json.loads(body)
            self.assertEqual(report["data"]["status"], "Ok")
            self.assertEqual(
                set(report),
                {"name", "version", "format_version", "timestamp", "category", "kind", "data"},
            )
            code, body = await self.mond("n2", "/1/report/default/kvm-inst-rss")
            self.assertEqual(set(json.loads(body)["data"]), {"d1", "p1"})
            code, body = await self.mond("n2", "/1/report/nope/nope")
            self.assertEqual(
                (code, body), (404, b"Unable to produce a report for the requested resource")
            )

        return defer.ensureDeferred(go())

    def test_diagnose_change_down_and_garbage(self) -> defer.Deferred[None]:
        async def go() -> None:
            report = {"status": "evacuate", "command": "", "details": "bad disk"}
            self.sim.sim.set_diagnose("n3", report)
            code, body = await self.mond("n3", "/1/report/node/diagnose")
            self.assertEqual(json.loads(body)["data"], report)
            self.sim.sim.set_mond("n3", "garbage")
            code, body = await self.mond("n3", "/1/report/node/diagnose")
            self.assertRaises(ValueError, json.loads, body)
            self.sim.sim.set_mond("n3", "down")
            with self.assertRaises(ConnectionRefusedError):
                await self.mond("n3", "/1/report/node/diagnose")
            code, _ = await self.mond("n2", "/1/report/node/diagnose")
            self.assertEqual(code, 200)
            self.sim.sim.set_mond("n3", "up")
            code, _ = await self.mond("n3", "/1/report/node/diagnose")
            self.assertEqual(code, 200)

        return defer.ensureDeferred(go())

    def test_slow_mond_answers_after_the_delay(self) -> defer.Deferred[None]:
        async def go() -> None:
            self.sim.sim.faults.mond_delay = 30
            self.sim.sim.set_mond("n2", "slow")
            pending = defer.ensureDeferred(self.mond("n2", "/1/report/node/diagnose"))
            await task.deferLater(reactor, 0.05, lambda: None)
            self.assertNoResult(pending)
            self.clock.advance(30)
            code, body = await pending
            self.assertEqual(code, 200)

        return defer.ensureDeferred(go())
