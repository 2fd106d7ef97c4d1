"""End-to-end: the real daemon (makeService) against the embedded simulator.

Real sockets on 127.0.0.0/8: RAPI over pinned TLS, one mond per node on its
own address, the admin control socket.  Rounds are driven one at a time by
calling the daemon's round runner (the round service's own schedule is set
to an hour), so every test is a deterministic sequence of rounds.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import defer, protocol, reactor, task, threads
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from maintd.admin import ctl
from maintd.cluster.rapi.errors import RapiServerError
from maintd.daemon.config import DaemonConfig
from maintd.daemon.state import TAG_FAILED, TAG_READY, MaintState, RepairStatus
from maintd.daemon.tap import makeService
from maintd.decide import incidents as I
from maintd.decide.guardrails import Limit
from maintd.decide.reason import parse_reason
from maintd.sim.faults import RapiFault
from tests.simulators import agent_argv, agent_config, free_port, start_simulator

EVACUATE = {"status": "evacuate", "command": None, "details": ["sda: reallocated sectors"]}
OK = {"status": "Ok", "command": None, "details": []}


def scenario(instances: list[dict[str, Any]], diagnose: dict[str, Any], nodes: int = 6,
             **node_extra: dict[str, Any]) -> dict[str, Any]:
    ns = []
    for i in range(1, nodes + 1):
        name = f"n{i}"
        node: dict[str, Any] = {"name": name, "group": "g1", **node_extra.get(name, {})}
        if name in diagnose:
            node["diagnose"] = diagnose[name]
        ns.append(node)
    return {"name": "e2e.example.com", "master": "n1", "groups": [{"name": "g1"}],
            "nodes": ns, "instances": instances}


def drbd(name: str, p: str, s: str) -> dict[str, Any]:
    return {"name": name, "primary": p, "secondary": s, "disk_template": "drbd",
            "memory": 1024, "disks": [10240]}


class Daemon:
    """A simulator plus a ganeti-maintd built by makeService, driven round by round."""

    def __init__(self, test: TestCase, spec: dict[str, Any], *, sim: Any = None,
                 job_seconds: float = 0.05, **config: Any) -> None:
        """``sim``: share another daemon's simulator (``spec`` unused then);
        ``config``: DaemonConfig fields (``hostname``, ...)."""
        self.test = test
        #: DaemonConfig fields that differ from the harness defaults.
        self.config_extra = config
        self.base = tempfile.mkdtemp(prefix="mdr-")  # short: UNIX socket path limit
        test.addCleanup(shutil.rmtree, self.base, True)
        if sim is None:
            path = os.path.join(self.base, "scenario.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            sim = start_simulator(test, os.path.join(self.base, "sim"), scenario=path,
                                  job_seconds=job_seconds, mond_port=free_port())
        self.sim = sim
        self.state_dir = os.path.join(self.base, "state")
        self.http_port = free_port()
        self.daemon: Any = None
        self.number = 0
        self.statuses: dict[str, list[str]] = {}

    @property
    def ctl_socket(self) -> str:
        return os.path.join(self.state_dir, "ctl.sock")

    async def start(self) -> None:
        s = self.sim
        values: dict[str, Any] = dict(
            state_dir=self.state_dir, port=self.http_port, rapi=s.rapi_url, rapi_user=s.rapi_user,
            rapi_password_file=s.rapi_password_file, rapi_cert=s.rapi_cert, rapi_insecure=False,
            mond_port=s.mond_port, mond_timeout=1.0, round_delay=3600.0, busy_round_delay=3600.0,
            job_wait=10.0,
            **agent_config(s),
        )
        config = DaemonConfig.for_tests(**{**values, **self.config_extra})
        self.daemon = makeService(config, reactor)
        self.daemon.store.add_listener(self._record)
        self.daemon.startService()
        # the service starts round 1 by itself; wait for it to end
        for _ in range(400):
            if self.daemon.rounds.rounds >= 1 and not self.daemon.rounds.running_round:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.number = self.daemon.rounds.rounds

    async def stop(self) -> None:
        if self.daemon is not None:
            daemon, self.daemon = self.daemon, None
            await daemon.stopService()
            rapi = daemon.rounds.round_fn.rapi
            if rapi is not None:
                await rapi.close()

    def _record(self, state: MaintState) -> None:
        for inc in state.incidents:
            seen = self.statuses.setdefault(inc.uuid, [])
            if not seen or seen[-1] != inc.status.wire:
                seen.append(inc.status.wire)

    async def round(self) -> None:
        """One round; waits first for the simulator's jobs of the last one."""
        self.number += 1
        await self.daemon.rounds.round_fn(self.number, lambda: False)

    async def rounds_until(self, cond: Callable[[], bool], limit: int = 15) -> int:
        for i in range(limit):
            if cond():
                return i
            await self.round()
        self.test.assertTrue(cond(), f"condition not reached in {limit} rounds")
        return limit

    async def operator_remove_tag(self, node: str, tag: str) -> None:
        """As ``gnt-node remove-tags``: through RAPI, waiting for the job."""
        rapi = self.daemon.rounds.round_fn.rapi
        jid = await rapi.remove_tags("node", node, [tag], reason="operator")
        result = await rapi.wait_jobs([jid], 10)
        self.test.assertTrue(result[jid].ok, result)

    async def wait_jobs_done(self) -> None:
        for _ in range(200):
            if all(job.status in ("success", "error") for job in self.jobs()):
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("simulator jobs did not finish")

    @property
    def state(self) -> MaintState:
        return self.daemon.store.state  # type: ignore[no-any-return]

    def incidents(self, node: str) -> list[Any]:
        return [i for i in self.state.incidents if i.node_name == node]

    def jobs(self) -> list[Any]:
        return [self.sim.sim.jobs.jobs[j] for j in sorted(self.sim.sim.jobs.jobs)]

    def ops(self, since: int = 0) -> list[tuple[int, dict[str, Any]]]:
        return [(job.id, op) for job in self.jobs() if job.id > since for op in job.ops]

    def node(self, name: str) -> Any:
        return self.sim.cluster.nodes[name]

    def inst(self, name: str) -> Any:
        return self.sim.cluster.instances[name]

    async def http_status(self) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        r = await treq.get(f"http://127.0.0.1:{self.http_port}/1/status", pool=pool, timeout=10)
        return await r.json()

    async def ctl(self, *argv: str) -> tuple[int, str, str]:
        def run() -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = ctl.main(["--socket", self.ctl_socket, *argv], out, err)
            return code, out.getvalue(), err.getvalue()

        return await threads.deferToThread(run)


def reasons(op: dict[str, Any]) -> list[str]:
    return [r[1] for r in op.get("reason", []) if r[0] == "gnt:user"]


class EndToEndTests(TestCase):
    timeout = 180

    async def daemon(self, spec: dict[str, Any]) -> Daemon:
        d = Daemon(self, spec)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
        await d.start()
        return d

    def run_async(self, fn: Callable[[], Any]) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(fn())

    # -- evacuation --------------------------------------------------------

    def test_evacuate(self) -> defer.Deferred[None]:
        return self.run_async(self._evacuate)

    async def _evacuate(self) -> None:
        spec = scenario([drbd("a1", "n2", "n3"), drbd("a2", "n2", "n4"), drbd("b1", "n5", "n2"),
                         drbd("c1", "n3", "n4")], {"n2": EVACUATE})
        d = await self.daemon(spec)
        [inc] = d.incidents("n2")
        uuid = inc.uuid
        self.assertTrue(d.node("n2").drained or inc.jobs, "round 1 drains the node")
        await d.rounds_until(lambda: d.incidents("n2")[0].status == RepairStatus.COMPLETED)
        await d.wait_jobs_done()
        self.assertTrue(d.node("n2").drained)
        self.assertEqual(d.inst("a1").primary, "n3")
        self.assertEqual(d.inst("a2").primary, "n4")
        self.assertNotIn("n2", d.inst("b1").secondaries)
        self.assertIn(TAG_READY + uuid, d.node("n2").tags)
        self.assertEqual(d.inst("c1").primary, "n3", "unrelated instance untouched")
        self.assertEqual(d.statuses[uuid], ["noted", "pending", "completed"])
        done = d.incidents("n2")[0]
        all_jobs = [job.id for job in d.jobs()]
        self.assertEqual(list(done.jobs), all_jobs, "every job id is listed on the incident")
        kinds = [op["OP_ID"] for _, op in d.ops()]
        # drain; migrate a1, a2 to their secondaries; then new secondaries for
        # a1, a2 (now secondary on n2) and b1; the tag
        self.assertEqual(kinds, ["OP_NODE_SET_PARAMS", "OP_INSTANCE_MIGRATE",
                                 "OP_INSTANCE_MIGRATE"] + ["OP_INSTANCE_REPLACE_DISKS"] * 3
                         + ["OP_TAGS_SET"])
        for _, op in d.ops():
            self.assertEqual(reasons(op), [I.job_reason(done)])
            self.assertEqual(parse_reason(reasons(op)[0]).id, uuid)  # type: ignore[union-attr]
        status = await d.http_status()
        self.assertEqual([(s["uuid"], s["repair-status"], s["jobs"]) for s in status],
                         [(uuid, "completed", all_jobs)])
        # same report on every round: still one incident; nothing more submitted
        n_jobs = len(d.jobs())
        await d.round()
        self.assertEqual(len(d.jobs()), n_jobs)
        self.assertEqual(len(d.state.incidents), 1)
        # the node is healthy again and the operator removes the tag: forgotten
        d.sim.sim.set_diagnose("n2", OK)
        await d.operator_remove_tag("n2", TAG_READY + uuid)
        await d.round()
        self.assertEqual(d.state.incidents, ())
        self.assertEqual(await d.http_status(), [])

    def test_evacuate_failover(self) -> defer.Deferred[None]:
        return self.run_async(self._evacuate_failover)

    async def _evacuate_failover(self) -> None:
        failover = {**EVACUATE, "status": "evacuate-failover"}
        spec = scenario([drbd("a1", "n2", "n3"), drbd("a2", "n2", "n4")], {"n2": failover})
        d = await self.daemon(spec)
        await d.rounds_until(lambda: d.incidents("n2")[0].status == RepairStatus.COMPLETED)
        kinds = [op["OP_ID"] for _, op in d.ops()]
        self.assertNotIn("OP_INSTANCE_MIGRATE", kinds)
        self.assertEqual(kinds.count("OP_INSTANCE_FAILOVER"), 2)
        self.assertEqual((d.inst("a1").primary, d.inst("a2").primary), ("n3", "n4"))

    def test_two_nodes_never_conflict(self) -> defer.Deferred[None]:
        return self.run_async(self._two_nodes)

    async def _two_nodes(self) -> None:
        insts = [drbd("a1", "n2", "n4"), drbd("a2", "n2", "n5"), drbd("a3", "n6", "n2"),
                 drbd("b1", "n3", "n4"), drbd("b2", "n3", "n6"), drbd("b3", "n5", "n3")]
        d = await self.daemon(scenario(insts, {"n2": EVACUATE, "n3": EVACUATE}, nodes=7))
        evacuating = {"n2", "n3"}
        last = 0

        def check_round() -> None:
            nonlocal last
            seen: set[str] = set()
            for jid, op in d.ops(since=last):
                nodes = self.touched(d, op, before)
                targets = {op.get("target_node"), op.get("remote_node")} - {None}
                self.assertFalse(targets & evacuating, f"job {jid} moves onto {targets}")
                self.assertFalse(evacuating <= nodes, f"job {jid} touches both: {op}")
                self.assertFalse(nodes & seen, f"job {jid} conflicts in its round: {op}")
                seen |= nodes
            last = max([job.id for job in d.jobs()] or [0])

        before = self.placement(d)
        check_round()  # round 1, done by the service at start
        for _ in range(20):
            if all(i.status == RepairStatus.COMPLETED for i in d.state.incidents):
                break
            before = self.placement(d)
            await d.round()
            check_round()
        self.assertEqual([i.status for i in d.state.incidents], [RepairStatus.COMPLETED] * 2)
        for inst in d.sim.cluster.instances.values():
            self.assertFalse({inst.primary, *inst.secondaries} & evacuating, inst.name)

    @staticmethod
    def placement(d: Daemon) -> dict[str, set[str]]:
        return {i.name: {i.primary, *i.secondaries} for i in d.sim.cluster.instances.values()}

    @staticmethod
    def touched(d: Daemon, op: dict[str, Any], before: dict[str, set[str]]) -> set[str]:
        nodes = set(before.get(op.get("instance_name", ""), set()))
        for key in ("node_name", "target_node", "remote_node"):
            if op.get(key):
                nodes.add(op[key])
        if op["OP_ID"] == "OP_TAGS_SET" and op.get("name"):
            nodes.add(op["name"])
        return nodes

    # -- failures ------------------------------------------------------------

    def test_failed_job(self) -> defer.Deferred[None]:
        return self.run_async(self._failed_job)

    async def _failed_job(self) -> None:
        spec = scenario([drbd("a1", "n2", "n3"), drbd("a2", "n2", "n4")], {"n2": EVACUATE})
        d = await self.daemon(spec)
        [inc] = d.incidents("n2")
        await d.wait_jobs_done()  # the drain
        d.sim.sim.set_fail_next(1)
        await d.round()  # submits the first migration, which will fail
        await d.round()  # sees the failure
        inc = d.state.incident(inc.uuid)
        assert inc is not None
        self.assertEqual(inc.status, RepairStatus.FAILED)
        self.assertIn("job 2 error", inc.reason)
        self.assertIn("Simulated failure", inc.reason)
        await d.round()
        self.assertIn(TAG_FAILED + inc.uuid, d.node("n2").tags)
        self.assertEqual(d.inst("a2").primary, "n2")
        n_jobs = len(d.jobs())
        await d.round()
        await d.round()
        self.assertEqual(len(d.jobs()), n_jobs, "no further jobs for a failed incident")
        # the operator acknowledges; the node still reports: a fresh incident
        await d.operator_remove_tag("n2", TAG_FAILED + inc.uuid)
        await d.round()
        [fresh] = d.incidents("n2")
        self.assertNotEqual(fresh.uuid, inc.uuid)
        self.assertEqual(fresh.status, RepairStatus.PENDING)

    def test_plain_instance_fails(self) -> defer.Deferred[None]:
        return self.run_async(self._plain)

    async def _plain(self) -> None:
        plain = {"name": "p1", "primary": "n2", "disk_template": "plain", "memory": 512}
        d = await self.daemon(scenario([plain, drbd("a1", "n2", "n3")], {"n2": EVACUATE}))
        [inc] = d.incidents("n2")
        # drained first (as Ganeti 2.17 did): no new instances on the failing node
        self.assertEqual(inc.status, RepairStatus.PENDING)
        await d.wait_jobs_done()
        self.assertTrue(d.node("n2").drained)
        await d.round()
        inc = d.state.incident(inc.uuid)
        assert inc is not None
        self.assertEqual(inc.status, RepairStatus.FAILED)
        self.assertIn("p1 has disk template plain", inc.reason)
        await d.round()
        self.assertIn(TAG_FAILED + inc.uuid, d.node("n2").tags)
        self.assertEqual([op["OP_ID"] for _, op in d.ops()],
                         ["OP_NODE_SET_PARAMS", "OP_TAGS_SET"])
        self.assertEqual(d.inst("a1").primary, "n2", "nothing moved for a failed incident")

    def test_live_repair_through_the_agent_and_dedupe(self) -> defer.Deferred[None]:
        return self.run_async(self._live_repair)

    async def _live_repair(self) -> None:
        report = {"status": "live-repair", "command": "fix-disk", "details": ["sdb"]}
        d = await self.daemon(scenario([], {"n3": report}))
        [inc] = d.incidents("n3")
        self.assertEqual((inc.status, inc.reason), (RepairStatus.COMPLETED, ""),
                         "the default executor: the node's (simulated, signed) agent")
        self.assertEqual(d.sim.agents.calls, [("n3", "fix-disk", report)],
                         "run once, on n3, the report on stdin")
        await d.round()
        await d.round()
        self.assertEqual(len(d.state.incidents), 1, "same report: one incident")
        self.assertEqual(len(d.sim.agents.calls), 1, "a completed repair is not run again")
        d.sim.sim.set_diagnose("n3", {**report, "details": ["sdb", "sdc"]})
        await d.round()
        self.assertEqual(len(d.incidents("n3")), 2, "changed report: a new incident")

    def test_faults_do_not_stop_rounds(self) -> defer.Deferred[None]:
        return self.run_async(self._faults)

    async def _faults(self) -> None:
        spec = scenario([drbd("a1", "n2", "n3")], {"n4": EVACUATE, "n5": EVACUATE})
        sim_state = dict(spec)
        # three of six nodes with a problem would be a storm by default (and
        # n4/n5 keep counting while they cannot be asked): this test is about
        # faults, so the breaker trips only above 3 and the budget is 3
        d = Daemon(self, sim_state, storm_threshold=Limit(count=3),
                   max_evacuating=Limit(count=3))
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(d.stop()))
        await d.start()
        # round 1 saw both; now mond down on n4, garbage from n5, and n2 reports
        self.assertEqual(sorted(i.node_name for i in d.state.incidents), ["n4", "n5"])
        d.sim.sim.set_mond("n4", "down")
        d.sim.sim.set_mond("n5", "garbage")
        d.sim.sim.set_diagnose("n2", EVACUATE)
        await d.round()
        self.assertEqual(sorted(i.node_name for i in d.state.incidents), ["n2", "n4", "n5"])
        before = d.state.incidents
        d.sim.sim.faults.add_rapi(RapiFault(kind="status", status=503, count=None))
        with self.assertRaises(RapiServerError):
            await d.round()
        self.assertEqual(d.state.incidents, before, "nothing lost in a failed round")
        # The bulk reads that did not fail first are still in their retry
        # back-off (the RAPI client does not cancel them): let them end.
        await task.deferLater(reactor, 4.0, lambda: None)
        self.assertEqual(d.state.last_round["result"], "failed")
        self.assertIn("503", d.state.last_round["error"])
        d.sim.sim.faults.add_rapi(None)
        await d.round()
        self.assertEqual(d.state.last_round["result"], "ok")
        await d.rounds_until(lambda: all(i.status == RepairStatus.COMPLETED
                                         for i in d.state.incidents))
        self.assertEqual(d.inst("a1").primary, "n3")

    # -- restart -------------------------------------------------------------

    def test_restart_mid_evacuation(self) -> defer.Deferred[None]:
        return self.run_async(self._restart)

    async def _restart(self) -> None:
        spec = scenario([drbd("a1", "n2", "n3"), drbd("a2", "n2", "n4"), drbd("b1", "n5", "n2")],
                        {"n2": EVACUATE})
        d = await self.daemon(spec)
        await d.round()  # the first migration is submitted
        self.assertEqual(len(d.jobs()), 2)
        await d.stop()  # the daemon goes away while the job runs
        await d.start()  # same state dir
        [inc] = d.incidents("n2")
        await d.rounds_until(lambda: d.incidents("n2")[0].status == RepairStatus.COMPLETED)
        moves = [(op["OP_ID"], op.get("instance_name") or op.get("node_name"))
                 for _, op in d.ops()]
        self.assertEqual(len(moves), len(set(moves)), f"a job was submitted twice: {moves}")
        self.assertEqual(len(moves), 7)  # drain, 2 migrations, 3 new secondaries, tag
        self.assertEqual(list(d.incidents("n2")[0].jobs), [job.id for job in d.jobs()])

    # -- admin tool ------------------------------------------------------------

    def test_cancel_and_forget(self) -> defer.Deferred[None]:
        return self.run_async(self._cancel_forget)

    async def _cancel_forget(self) -> None:
        plain = {"name": "p1", "primary": "n3", "disk_template": "plain", "memory": 512}
        # n3 is drained already: its incident fails in the first round
        spec = scenario([drbd("a1", "n2", "n4"), drbd("a2", "n2", "n5"), plain],
                        {"n2": EVACUATE, "n3": EVACUATE}, n3={"drained": True})
        d = await self.daemon(spec)
        [inc] = d.incidents("n2")
        [failed] = d.incidents("n3")
        code, out, err = await d.ctl("list")
        self.assertEqual(code, 0, err)
        self.assertIn(inc.uuid, out)
        self.assertIn("pending", out)
        code, out, err = await d.ctl("cancel", inc.uuid)
        self.assertEqual((code, out), (0, f"Incident {inc.uuid} canceled.\n"), err)
        n_jobs = len(d.jobs())
        await d.round()
        await d.round()
        self.assertEqual(len(d.jobs()), n_jobs, "no jobs for a canceled incident")
        self.assertEqual(d.incidents("n2")[0].status, RepairStatus.CANCELED)
        code, out, _ = await d.ctl("list", "--json")
        self.assertEqual(json.loads(out)["incidents"][0]["repair-status"], "canceled")
        d.sim.sim.set_diagnose("n2", OK)
        await d.round()
        self.assertEqual(d.incidents("n2"), [], "forgotten once the node stops reporting it")
        code, out, err = await d.ctl("forget", failed.uuid)
        self.assertEqual(code, 0, err)
        self.assertIsNone(d.state.incident(failed.uuid))
        code, _, err = await d.ctl("forget", failed.uuid)
        self.assertEqual(code, 1)
        self.assertIn("no incident", err)


class DaemonProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-200000:]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class KillTests(TestCase):
    """The daemon as a real process, killed with SIGKILL mid-evacuation."""

    timeout = 240

    def test_kill_and_restart(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._kill_restart())

    def spawn(self, args: list[str]) -> DaemonProcess:
        proto = DaemonProcess()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        reactor.spawnProcess(proto, sys.executable, twistd + args, env=env)  # type: ignore[attr-defined]

        def kill() -> Any:
            if proto.ended.called:
                return None
            proto.transport.signalProcess("KILL")  # type: ignore[union-attr]
            return proto.ended

        self.addCleanup(kill)
        return proto

    async def status(self, port: int) -> list[dict[str, Any]] | None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        try:
            r = await treq.get(f"http://127.0.0.1:{port}/1/status", pool=pool, timeout=5)
            return await r.json()  # type: ignore[no-any-return]
        except Exception:
            return None  # not up yet

    async def until(self, port: int, cond: Callable[[list[dict[str, Any]]], bool],
                    proto: DaemonProcess, limit: float = 90.0) -> list[dict[str, Any]]:
        for _ in range(int(limit / 0.1)):
            st = await self.status(port)
            if st is not None and cond(st):
                return st
            if proto.ended.called:
                raise AssertionError(f"daemon exited:\n{proto.output.decode()[-3000:]}")
            await task.deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"condition not reached:\n{proto.output.decode()[-3000:]}")

    async def _kill_restart(self) -> None:
        base = tempfile.mkdtemp(prefix="mdk-")
        self.addCleanup(shutil.rmtree, base, True)
        spec = scenario([drbd("a1", "n2", "n3"), drbd("a2", "n2", "n4"), drbd("a3", "n2", "n5")],
                        {"n2": EVACUATE})
        path = os.path.join(base, "scenario.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        sim = start_simulator(self, os.path.join(base, "sim"), scenario=path,
                              job_seconds=0.3, mond_port=free_port())
        port = free_port()
        args = ["-n", "--pidfile=", "ganeti-maintd", "-p", str(port), "-b", "127.0.0.1",
                "--state-dir", os.path.join(base, "state"), "--no-voting", "--yes-do-it",
                "--rapi", sim.rapi_url, "--rapi-user", str(sim.rapi_user),
                "--rapi-password-file", str(sim.rapi_password_file), "--rapi-cert", sim.rapi_cert,
                "--mond-port", str(sim.mond_port), "--mond-timeout", "2", "--round-delay", "0.1",
                "--job-wait", "10", *agent_argv(sim)]
        first = self.spawn(args)
        # drained and the first migration submitted: kill it
        await self.until(port, lambda st: bool(st) and len(st[0]["jobs"]) >= 2, first)
        first.transport.signalProcess("KILL")  # type: ignore[union-attr]
        await first.ended
        second = self.spawn(args)
        st = await self.until(port, lambda st: bool(st) and st[0]["repair-status"] == "completed",
                              second)
        jobs = [sim.sim.jobs.jobs[j] for j in sorted(sim.sim.jobs.jobs)]
        moves = [(op["OP_ID"], op.get("instance_name") or op.get("node_name") or op.get("name"))
                 for job in jobs for op in job.ops]
        self.assertEqual(len(moves), len(set(moves)), f"a job was submitted twice: {moves}")
        self.assertEqual(st[0]["jobs"], [job.id for job in jobs])
        self.assertEqual({sim.cluster.instances[i].primary for i in ("a1", "a2", "a3")},
                         {"n3", "n4", "n5"})
        second.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await second.ended
