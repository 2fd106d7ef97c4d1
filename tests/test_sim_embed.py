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

from maintd.cluster.rapi.client import RapiClient
from tests.simulators import client_for, free_port, start_simulator

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
        self.sim = start_simulator(
            self,
            os.path.join(self.workdir, "sim"),
            scenario=path,
            job_seconds=0,
            mond_port=free_port(),
            plain_http=self.plain_http,
            clock=self.clock,
        )
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.addCleanup(self.pool.closeCachedConnections)

    async def held(self, node: str) -> None:
        """Wait (bounded) until ``node``'s mond holds a request (hang or slow)."""
        res = self.sim.monds.resources[node]
        for _ in range(1000):
            if res.hung or res.delayed:
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"mond of {node} never received the request")

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
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        with open(self.sim.rapi_cert, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        # Ganeti's fixed subject; no subjectAltName, so clients must pin the certificate.
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.assertEqual(cn, "ganeti.example.com")

    def test_each_node_has_its_own_loopback_address(self) -> None:
        pips = [n.pip for n in self.sim.cluster.nodes.values()]
        self.assertEqual(len(set(pips)), len(pips))
        for pip in pips:
            self.assertTrue(pip.startswith("127.") and not pip.startswith("127.0.0."))


class RapiClientTests(EmbeddedTestBase):
    """maintd's own RAPI client, pinned to the simulator's certificate."""

    def client(self) -> RapiClient:
        return client_for(self, self.sim, timeout=5)

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
            self.sim.set_diagnose("n3", report)
            code, body = await self.mond("n3", "/1/report/node/diagnose")
            self.assertEqual(json.loads(body)["data"], report)
            self.sim.set_mond("n3", "garbage")
            code, body = await self.mond("n3", "/1/report/node/diagnose")
            self.assertRaises(ValueError, json.loads, body)
            self.sim.set_mond("n3", "down")
            with self.assertRaises(ConnectionRefusedError):
                await self.mond("n3", "/1/report/node/diagnose")
            code, _ = await self.mond("n2", "/1/report/node/diagnose")
            self.assertEqual(code, 200)
            self.sim.set_mond("n3", "up")
            code, _ = await self.mond("n3", "/1/report/node/diagnose")
            self.assertEqual(code, 200)

        return defer.ensureDeferred(go())

    def test_slow_mond_answers_after_the_delay(self) -> defer.Deferred[None]:
        async def go() -> None:
            self.sim.sim.faults.mond_delay = 30
            self.sim.set_mond("n2", "slow")
            pending = defer.ensureDeferred(self.mond("n2", "/1/report/node/diagnose"))
            await self.held("n2")
            self.assertNoResult(pending)
            self.clock.advance(30)
            code, body = await pending
            self.assertEqual(code, 200)

        return defer.ensureDeferred(go())


class RehearsalTests(EmbeddedTestBase):
    """A snapshot taken through RAPI becomes a simulator that answers the same."""

    def test_snapshot_of_a_cluster_simulates_the_same_cluster(self) -> defer.Deferred[None]:
        from maintd.cluster import model

        async def go() -> None:
            client = client_for(self, self.sim, timeout=5)
            original = await client.load_cluster()
            path = os.path.join(self.workdir, "snapshot.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(model.to_json(original), f)
            copy = start_simulator(
                self,
                os.path.join(self.workdir, "copy"),
                scenario=path,
                mond_port=free_port(),
                clock=task.Clock(),
            )
            client2 = client_for(self, copy, timeout=5)
            rehearsed = await client2.load_cluster()

            def essentials(c: model.Cluster) -> Any:
                return (
                    {
                        n.name: (
                            n.group,
                            n.mtotal,
                            n.mnode,
                            n.mfree,
                            n.dtotal,
                            n.dfree,
                            n.offline,
                            n.drained,
                            n.master,
                            sorted(n.primaries),
                            sorted(n.secondaries),
                            n.uuid,
                        )
                        for n in c.nodes.values()
                    },
                    {
                        i.name: (
                            i.primary,
                            i.secondaries,
                            i.disk_template,
                            i.memory,
                            i.disk_sizes,
                            i.admin_state,
                            i.status,
                            i.uuid,
                        )
                        for i in c.instances.values()
                    },
                    {g.name: (g.uuid, g.alloc_policy) for g in c.groups.values()},
                    c.master,
                )

            self.assertEqual(essentials(rehearsed), essentials(original))

        return defer.ensureDeferred(go())


class FaultConvenienceTests(EmbeddedTestBase):
    plain_http = True

    def test_rapi_fault_and_failed_job_seen_by_a_client(self) -> defer.Deferred[None]:
        async def go() -> None:
            auth = (self.sim.rapi_user, self.sim.generated_password)
            self.sim.rapi_fault({"status": 500, "count": 1})
            resp = await self.http.get(self.sim.rapi_url + "/2/info", auth=auth)
            self.assertEqual(resp.code, 500)
            self.assertEqual(json.loads(await resp.content())["code"], 500)
            resp = await self.http.get(self.sim.rapi_url + "/2/info", auth=auth)
            self.assertEqual(resp.code, 200)
            await resp.content()
            self.sim.fail_next_jobs(1)
            resp = await self.http.put(self.sim.rapi_url + "/2/tags?tag=x", auth=auth)
            job_id = json.loads(await resp.content())
            self.clock.advance(0)
            self.clock.advance(0)
            state = self.sim.state()
            self.assertEqual(state["jobs"]["by_status"], {"error": 1})
            self.assertEqual(state["tags"], [])
            self.assertEqual(self.sim.sim.jobs.jobs[job_id].status, "error")

        return defer.ensureDeferred(go())


class MondHangTests(EmbeddedTestBase):
    plain_http = True

    def test_hung_mond_never_answers_until_mode_changes(self) -> defer.Deferred[None]:
        from twisted.web._newclient import ResponseNeverReceived

        async def go() -> None:
            self.sim.set_mond("n2", "hang")
            pending = defer.ensureDeferred(self.mond("n2", "/1/report/node/diagnose"))
            await self.held("n2")
            self.assertNoResult(pending)
            self.sim.set_mond("n2", "up")
            with self.assertRaises(ResponseNeverReceived):
                await pending
            code, _ = await self.mond("n2", "/1/report/node/diagnose")
            self.assertEqual(code, 200)

        return defer.ensureDeferred(go())
