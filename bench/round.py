"""Benchmark: one maintenance round on a simulated 1,000-node cluster.

The simulator (``twistd ganeti-sim``) runs in a child process — the cluster's
machines are not the daemon's CPU — with 1,000 nodes, 4,000 DRBD instances,
one mond per node on its own 127.x.y.z address.  5 % of the monds accept
connections and never answer (``hang``), 2 % report ``evacuate``, the rest
``Ok``.  The daemon's side is real: the RAPI client (plain HTTP, basic auth)
and loader for the snapshot, the mond client, the round steps (snapshot,
cleanup, collect, handle) in dry-run so nothing is submitted.

Target: snapshot + collect + decide < 2 s plus one per-node timeout.

Then (issue 17, plan before drain): planning the whole evacuation of a node
with 200 instances (primaries and secondaries) on a 1,000-node snapshot,
first alone, then as the handle step's round gate does it.  ``--plan-only``
prints just that (no simulator).

    .venv/bin/python bench/round.py [--nodes 1000] [--timeout 2] [--parallel 1024] [--plan-only]
With ``--agents`` the self-diagnose reports come from the simulator's node
agents instead (what the daemon uses by default): HTTPS pinned to the
simulator's ``server.pem``, every report signed with its HMAC key and
verified by the daemon's agent client (RAPI over HTTPS too); the figures add
the signature verification cost.  The first round is the daemon's first
(every connection new: TCP and a full TLS handshake per node, 64 at a time);
the second goes over the connections kept from it.  The simulator's CPU per
step is printed too: on a shared 2-CPU machine the simulator's 1,000 TLS
servers and the daemon compete for the same cores.

    .venv/bin/python bench/round.py [--nodes 1000] [--timeout 2] [--parallel 1024] [--agents]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import attrs
from twisted.internet import defer, task

from maintd.cluster.agent import AgentClient
from maintd.cluster.model import Cluster, Instance
from maintd.cluster.mond import DEFAULT_PARALLEL, MondClient
from maintd.cluster.rapi.client import RapiClient
from maintd.common import signing
from maintd.daemon.state import MaintState
from maintd.daemon.steps.cleanup import cleanup_step
from maintd.daemon.steps.collect import collect_step
from maintd.daemon.steps.handle import handle_step
from maintd.daemon.steps.snapshot import snapshot_step
from maintd.decide import evacplan
from maintd.decide import guardrails as G
from maintd.decide import incidents as I
from maintd.decide.balance.gen import generate_cluster

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def child_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_scenario(n: int, seed: int) -> tuple[dict[str, Any], int, int]:
    rng = random.Random(seed)
    names = [f"node{i:04d}" for i in range(n)]
    shuffled = names[:]
    rng.shuffle(shuffled)
    n_dead, n_inc = n * 5 // 100, n * 2 // 100
    dead, incident = set(shuffled[:n_dead]), set(shuffled[n_dead:n_dead + n_inc])
    nodes = []
    for name in names:
        node: dict[str, Any] = {"name": name, "group": f"g{int(name[4:]) // 250}",
                                "mtotal": 262144, "dtotal": 8 * 1024 * 1024}
        if name in dead:
            node["mond"] = "hang"
        if name in incident:
            node["diagnose"] = {"status": "evacuate", "command": None,
                                "details": [f"disk failing on {name}"]}
        nodes.append(node)
    instances = []
    for i in range(n * 4):
        g = (i % n) // 250
        base = g * 250
        size = min(250, n - base)
        p = base + (i % size)
        s = base + ((i % size) + 1 + i // n) % size
        instances.append({"name": f"inst{i:05d}", "primary": names[p], "secondary": names[s],
                          "disk_template": "drbd", "memory": 1024, "disks": [10240]})
    groups = [{"name": f"g{g}"} for g in range((n + 249) // 250)]
    return ({"name": "bench.example.com", "master": names[0], "groups": groups,
             "nodes": nodes, "instances": instances}, n_dead, n_inc)


@attrs.define
class Ctx:
    state: MaintState
    rapi: Any
    mond: Any
    config: Any
    now: float
    reactor: Any
    executor: Any = None
    agent: Any = None
    submitting: bool = True
    cluster: Any = None
    store: Any = None
    free_nodes: set[str] = attrs.field(factory=set)
    notes: list[dict[str, Any]] = attrs.field(factory=list)
    reports: dict[str, Any] = attrs.field(factory=dict)

    async def commit(self, new: MaintState) -> None:
        self.state = new


class TimedMond:
    """The real MondClient, recording when each node's request started and ended."""

    def __init__(self, mond: MondClient) -> None:
        self.mond = mond
        self.t0 = 0.0
        self.spans: dict[str, tuple[float, float, bool]] = {}
        self.results: dict[str, Any] = {}

    async def diagnose(self, node: Any) -> Any:
        return await self.mond.diagnose(node)

    async def gather(self, nodes: Any, fn: Any) -> Any:
        self.t0 = time.perf_counter()
        self.spans = {}

        async def timed(node: Any) -> Any:
            s = time.perf_counter() - self.t0
            ok = False
            try:
                r = await fn(node)
                ok = True
                return r
            finally:
                self.spans[node.name] = (s, time.perf_counter() - self.t0, ok)

        self.results = await self.mond.gather(nodes, timed)
        return self.results

    def summary(self) -> str:
        live = [e for s, e, ok in self.spans.values() if ok]
        dead = [(s, e) for s, e, ok in self.spans.values() if not ok]
        text = f"last answer at {max(live, default=0):.2f} s"
        if dead:
            text += (f"; silent nodes asked from {min(s for s, _ in dead):.2f} to "
                     f"{max(s for s, _ in dead):.2f} s, last timeout at "
                     f"{max(e for _, e in dead):.2f} s")
        return text


@attrs.frozen
class Cfg:
    dry_run: bool = True
    job_wait: float = 0.0


async def wait_for_rapi(reactor: Any, rapi: RapiClient, child: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if child.poll() is not None:
            raise SystemExit("simulator exited early; see its log")
        try:
            await rapi.version()
            return
        except Exception:
            await task.deferLater(reactor, 0.2, lambda: None)
    raise SystemExit("simulator did not start within 120 s")


def evacuation_snapshot(nodes: int, on_node: int, seed: int) -> tuple[Cluster, str]:
    """A synthetic ``nodes``-node cluster plus one big node carrying ``on_node``
    instances: 60 % DRBD primaries, 30 % DRBD secondaries, 10 % shared storage."""
    rng = random.Random(seed)
    base = generate_cluster(nodes, nodes * 4, seed)
    names = sorted(n for n in base.nodes if n != base.master)
    victim = names[0]
    others = names[1:]
    insts = dict(base.instances)
    # the victim keeps only what the bench puts there
    for name, inst in list(insts.items()):
        if victim == inst.primary or victim in inst.secondaries:
            del insts[name]
    used_disk: dict[str, int] = {}
    added_mem = 0
    for k in range(on_node):
        name = f"evac{k:04d}.example.com"
        mem = rng.choice((512, 1024, 2048))
        size = rng.choice((10240, 20480))
        r = k % 10
        if r < 6:
            inst = Instance(name, name, victim, (rng.choice(others),), "drbd", memory=mem,
                            disk_sizes=(size,), vcpus=1)
            added_mem += mem
        elif r < 9:
            inst = Instance(name, name, rng.choice(others), (victim,), "drbd", memory=mem,
                            disk_sizes=(size,), vcpus=1)
        else:
            inst = Instance(name, name, victim, (), "sharedfile", memory=mem, vcpus=1)
            added_mem += mem
        insts[name] = inst
        for n in (inst.primary, *inst.secondaries):
            if inst.is_drbd:
                used_disk[n] = used_disk.get(n, 0) + size
    mem_of = {i.primary: 0 for i in insts.values()}
    for i in insts.values():
        if i.running and i.primary != victim and i.name.startswith("evac"):
            mem_of[i.primary] += i.memory
    nodes_out = {}
    for name, n in base.nodes.items():
        if name == victim:
            n = attrs.evolve(n, mtotal=1 << 20, mnode=2048, mfree=(1 << 20) - 2048 - added_mem,
                             dtotal=10_000_000, dfree=10_000_000 - used_disk.get(name, 0))
        else:
            n = attrs.evolve(n, mfree=n.mfree - mem_of.get(name, 0),
                             dfree=n.dfree - used_disk.get(name, 0))
        nodes_out[name] = n
    return attrs.evolve(base, nodes=nodes_out, instances=insts), victim


def bench_evacuation_plan(nodes: int, on_node: int, seed: int) -> None:
    cluster, victim = evacuation_snapshot(nodes, on_node, seed)
    s, c = time.perf_counter(), time.process_time()
    plan = evacplan.Planner(cluster, {victim}).plan(victim)
    wall, cpu = time.perf_counter() - s, time.process_time() - c
    moved = len({st.instance for st in plan.steps})
    print(f"evacuation plan: node with {on_node} instances on a {len(cluster.nodes)}-node, "
          f"{len(cluster.instances)}-instance snapshot: {wall:.3f} s wall {cpu:.3f} s CPU; "
          f"{'feasible' if plan.feasible else 'NOT feasible: ' + str(plan.reason)}, "
          f"{len(plan.steps)} moves for {moved} instances")
    from maintd.daemon.state import Action, Incident

    inc = Incident(uuid="bench", node="u", node_name=victim, original={}, action=Action.EVACUATE)
    s, c = time.perf_counter(), time.process_time()
    gate = G.round_gate([inc], master=cluster.master, budget=1, breaker=G.Breaker(), pause=None,
                        planner=evacplan.Planner(cluster, {victim}))
    step = evacplan.next_step(cluster, gate.plans[victim], failover=False,
                              available=set(cluster.nodes), busy=set(), incident_nodes={victim})
    wall, cpu = time.perf_counter() - s, time.process_time() - c
    verdict = "OK" if cpu < 2 else "SLOW"
    print(f"  round gate (budget, breaker, whole plan) + this round's job: {wall:.3f} s wall "
          f"{cpu:.3f} s CPU -> {I.describe(step)} (round budget 2 s of CPU: {verdict})")
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)")


async def main(reactor: Any, args: argparse.Namespace, work: str) -> None:
    spec, n_dead, n_inc = build_scenario(args.nodes, args.seed)
    path = os.path.join(work, "scenario.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    password = secrets.token_urlsafe(12)
    users = os.path.join(work, "users")
    pwfile = os.path.join(work, "password")
    for p, text in ((users, f"bench {password} write\n"), (pwfile, password + "\n")):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    rapi_port, mond_port, agent_port = free_port(), free_port(), free_port()
    log = open(os.path.join(work, "sim.log"), "wb")
    t0 = time.perf_counter()
    key_file = os.path.join(work, "hmac.key")
    with open(key_file, "w") as f:
        f.write(secrets.token_hex(20) + "\n")
    child = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "-l", "-", "ganeti-sim", "--scenario", path,
         *([] if args.agents else ["--plain-http"]),
         "--rapi-port", str(rapi_port), "--mond-port", str(mond_port), "--rapi-users", users,
         "--agent-port", str(agent_port), "--hmac-key", key_file, "--workdir", work],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(600):  # the simulator writes its certificates as it starts
            if not args.agents or os.path.exists(os.path.join(work, "server.pem")):
                break
            if child.poll() is not None:
                raise SystemExit("simulator exited early; see its log")
            await task.deferLater(reactor, 0.2, lambda: None)
        scheme = "https" if args.agents else "http"
        rapi = RapiClient.create(f"{scheme}://127.0.0.1:{rapi_port}", reactor=reactor,
                                 user="bench", password_file=pwfile, timeout=60,
                                 cert=os.path.join(work, "rapi.pem") if args.agents else None)
        await wait_for_rapi(reactor, rapi, child)
        print(f"simulator (child process): {args.nodes} nodes, {len(spec['instances'])} DRBD "
              f"instances, {n_dead} monds hang, {n_inc} report evacuate; "
              f"up in {time.perf_counter() - t0:.1f} s")
        agent = None
        if args.agents:
            agent = AgentClient.create(reactor, key=signing.read_key(key_file),
                                       cert=os.path.join(work, "server.pem"), port=agent_port,
                                       timeout=args.timeout, parallel=args.parallel)
            mond = TimedMond(agent)
            print("self-diagnose from the node agents: HTTPS (pinned server.pem), signed "
                  "reports verified")
        else:
            mond = TimedMond(MondClient(reactor, port=mond_port, timeout=args.timeout,
                                        parallel=args.parallel))
        for attempt in range(2):
            ctx = Ctx(MaintState(), rapi, mond, Cfg(), reactor.seconds(), reactor)
            if agent is not None:
                ctx.agent, ctx.mond = mond, None
                verified, spent = agent.verified, agent.verify_seconds
                pool = (agent.pool.reused, agent.pool.opened, agent.pool.retried, agent.resumed)
            times, cpu, sim_cpu = {}, {}, {}
            start = time.perf_counter()
            for step in (snapshot_step, cleanup_step, collect_step, handle_step):
                s, c, sc = time.perf_counter(), time.process_time(), child_cpu(child.pid)
                await step(ctx)
                times[step.__name__] = time.perf_counter() - s
                cpu[step.__name__] = time.process_time() - c
                sim_cpu[step.__name__] = child_cpu(child.pid) - sc
            total = time.perf_counter() - start
            label = "first round" if attempt == 0 else "second round (silent nodes asked first)"
            print(f"{label}:")
            for k, v in times.items():
                print(f"  {k:14s} {v:7.3f} s wall {cpu[k]:7.3f} s CPU "
                      f"(simulator {sim_cpu[k]:6.2f} s CPU)")
            print(f"  collect: {mond.summary()}")
            if agent is not None:
                n_ver = agent.verified - verified
                cost = agent.verify_seconds - spent
                print(f"  verification: {n_ver} signed reports checked (strict JSON, HMAC-SHA1, "
                      f"window) in {cost * 1000:.1f} ms (reactor thread, wall), "
                      f"{cost / max(n_ver, 1) * 1e6:.0f} us per report; outcomes (both rounds) "
                      f"{agent.counters.totals()}")
                reused, opened, retried, resumed = (
                    now - before for now, before in zip(
                        (agent.pool.reused, agent.pool.opened, agent.pool.retried,
                         agent.resumed), pool, strict=True))
                print(f"  connections: {reused} kept from the last round, {opened} new "
                      f"({resumed} with a resumed TLS session), {retried} kept ones found "
                      f"closed and retried; {len(agent.pool)} kept for the next round")
            new = len(ctx.state.incidents)
            plans = [n for n in ctx.notes if "plan" in n]
            unreachable = sum(n.get("unreachable", 0) for n in ctx.notes)
            budget = 2.0 + args.timeout
            print(f"  total {total:.3f} s (target < {budget:.1f} s: "
                  f"{'OK' if total < budget else 'SLOW'}); per-node timeout {args.timeout:g} s, "
                  f"parallel {args.parallel}")
            print(f"  incidents noted {new} (expected {n_inc}), monds without answer "
                  f"{unreachable} (expected {n_dead}), plans {len(plans)}")
            if new != n_inc or unreachable != n_dead:
                errors = [str(r) for r in mond.results.values() if isinstance(r, Exception)]
                raise SystemExit(f"unexpected result, e.g. {errors[:1]}")
        s = time.perf_counter()
        I.decide(ctx.cluster, ctx.state, I.free_nodes(ctx.cluster, ctx.state), ())
        print(f"  decide() alone: {time.perf_counter() - s:.3f} s")
        print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        await rapi.close()
        if agent is not None:
            await agent.close()
        bench_evacuation_plan(args.nodes, 200, args.seed)
    finally:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plan-only", action="store_true",
                        help="only the evacuation-plan figure (no simulator)")
    parser.add_argument("--agents", action="store_true",
                        help="signed reports from the node agents over TLS")
    args = parser.parse_args()
    if args.plan_only:
        bench_evacuation_plan(args.nodes, 200, args.seed)
        sys.exit(0)
    with tempfile.TemporaryDirectory(prefix="bench-round-") as work:
        task.react(lambda r: defer.Deferred.fromCoroutine(main(r, args, work)))
