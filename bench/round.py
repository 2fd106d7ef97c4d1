"""Benchmark: one maintenance round on a simulated 1,000-node cluster.

5 % of the nodes' monds accept connections and never answer, 2 % report an
incident (evacuate), the rest report Ok.  Every mond is a real HTTP server on
its own 127.x.y.z address (same port, as on a real cluster).  The round runs
the real steps (snapshot, cleanup, collect, handle) in dry-run; the cluster
snapshot comes from an in-process RAPI stand-in that returns a prebuilt model
(``--rapi URL`` is not needed).

Target: snapshot + collect + decide < 2 s plus one per-node timeout.

    .venv/bin/python bench/round.py [--nodes 1000] [--timeout 2] [--parallel 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

import attrs
from twisted.internet import defer, protocol, task
from twisted.web import resource

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from maintd import incidents as I  # noqa: E402
from maintd.model import Cluster, Group, Instance, Node  # noqa: E402
from maintd.mond import MondClient  # noqa: E402
from maintd.state import MaintState  # noqa: E402
from maintd.steps.cleanup import cleanup_step  # noqa: E402
from maintd.steps.collect import collect_step  # noqa: E402
from maintd.steps.handle import handle_step  # noqa: E402
from maintd.steps.snapshot import snapshot_step  # noqa: E402


class Report(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return self.body


class Silent(protocol.Protocol):
    pass


class TinyMond(protocol.Protocol):
    """A minimal HTTP responder: cheap, so the benchmark measures the daemon's side."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            self.buf = b""
            assert self.transport is not None
            self.transport.write(self.response)


def tiny_factory(body: bytes) -> protocol.Factory:
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body
    f = protocol.Factory.forProtocol(lambda: TinyMond(response))  # type: ignore[arg-type]
    f.noisy = False
    return f


def report(status: str, detail: str) -> bytes:
    data = {"status": status, "command": None, "details": [detail]}
    return json.dumps({"name": "diagnose", "category": "node", "kind": 0, "data": data}).encode()


def build_cluster(n: int, block: int) -> Cluster:
    groups = {"default": Group("default", "g0")}
    nodes = {}
    instances = {}
    for i in range(n):
        name = f"node{i:04d}.example.com"
        pip = f"127.{block}.{i // 250}.{i % 250 + 1}"
        nodes[name] = Node(name=name, uuid=f"n{i}", group="default", pip=pip, mtotal=65536,
                           mfree=32768, dtotal=10**6, dfree=5 * 10**5)
    names = list(nodes)
    for i in range(n * 4):
        p = names[i % n]
        s = names[(i + 1 + i // n) % n]
        instances[f"inst{i:05d}"] = Instance(f"inst{i:05d}", f"i{i}", p, (s,), "drbd",
                                             memory=1024, disk_sizes=(10240,))
    return Cluster("bench", names[0], groups=groups, nodes=nodes, instances=instances)


class FakeRapi:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def load_cluster(self) -> Cluster:
        return self.cluster


@attrs.define
class Ctx:
    state: MaintState
    rapi: Any
    mond: Any
    config: Any
    now: float
    reactor: Any
    executor: Any = None
    submitting: bool = True
    cluster: Any = None
    store: Any = None
    free_nodes: set[str] = attrs.field(factory=set)
    notes: list[dict[str, Any]] = attrs.field(factory=list)

    async def commit(self, new: MaintState) -> None:
        self.state = new


@attrs.frozen
class Cfg:
    dry_run: bool = True
    job_wait: float = 0.0


def scenario(args: argparse.Namespace) -> tuple[Cluster, set[str], set[str], int]:
    rng = random.Random(args.seed)
    block = args.block
    cluster = build_cluster(args.nodes, block)
    names = sorted(cluster.nodes)
    rng.shuffle(names)
    n_dead = args.nodes * 5 // 100
    n_inc = args.nodes * 2 // 100
    return cluster, set(names[:n_dead]), set(names[n_dead:n_dead + n_inc]), block


async def serve(reactor: Any, args: argparse.Namespace) -> None:
    """Child process: the monds (other machines in real life)."""
    cluster, dead, incident, block = scenario(args)
    ok_site = tiny_factory(report("Ok", "all fine"))
    silent = protocol.Factory.forProtocol(Silent)
    silent.noisy = False
    port = 0
    listeners = []
    t0 = time.perf_counter()
    for name in sorted(cluster.nodes):
        node = cluster.nodes[name]
        if name in dead:
            factory: Any = silent
        elif name in incident:
            factory = tiny_factory(report("evacuate", f"disk failing on {name}"))
        else:
            factory = ok_site
        p = reactor.listenTCP(port, factory, interface=node.pip)
        port = p.getHost().port
        listeners.append(p)
    print(f"READY {port} {time.perf_counter() - t0:.2f}", flush=True)
    await defer.Deferred()  # until killed


async def main(reactor: Any, args: argparse.Namespace, port: int) -> None:
    cluster, dead, incident, block = scenario(args)
    n_dead, n_inc = len(dead), len(incident)
    print(f"{args.nodes} monds (child process) on 127.{block}.x.y:{port}: "
          f"{n_dead} accept and never answer, {n_inc} report evacuate")

    mond = MondClient(reactor, port=port, timeout=args.timeout, parallel=args.parallel)
    ctx = Ctx(MaintState(), FakeRapi(cluster), mond, Cfg(), reactor.seconds(), reactor)
    times = {}
    start = time.perf_counter()
    cpu = {}
    for step in (snapshot_step, cleanup_step, collect_step, handle_step):
        s, c = time.perf_counter(), time.process_time()
        await step(ctx)
        times[step.__name__] = time.perf_counter() - s
        cpu[step.__name__] = time.process_time() - c
    total = time.perf_counter() - start
    new = len(ctx.state.incidents)
    plans = [n for n in ctx.notes if "plan" in n]
    unreachable = sum(n.get("unreachable", 0) for n in ctx.notes)
    for k, v in times.items():
        print(f"  {k:14s} {v:7.3f} s wall, {cpu[k]:7.3f} s CPU")
    print(f"round (snapshot+cleanup+collect+handle): {total:.3f} s; per-node timeout "
          f"{args.timeout:g} s, parallel {args.parallel}")
    print(f"  incidents noted: {new} (expected {n_inc}), unreachable monds: {unreachable} "
          f"(expected {n_dead}), plans: {len(plans)}")
    budget = 2.0 + args.timeout
    verdict = "OK" if total < budget else "SLOW"
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  target < {budget:.1f} s: {verdict}")
    # decide-only figure: the pure planner on this cluster and state
    s = time.perf_counter()
    I.decide(cluster, ctx.state, I.free_nodes(cluster, ctx.state), ())
    print(f"  decide() alone: {time.perf_counter() - s:.3f} s")
    await mond.close()
    if new != n_inc or unreachable != n_dead:
        raise SystemExit("unexpected result")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--block", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        task.react(lambda r: defer.Deferred.fromCoroutine(serve(r, args)))
        raise SystemExit(0)
    args.block = args.block or random.Random().randrange(100, 250)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--nodes", str(args.nodes), "--seed",
         str(args.seed), "--block", str(args.block)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        if not line.startswith("READY "):
            raise SystemExit(f"mond child failed to start: {line!r}")
        port = int(line.split()[1])
        task.react(lambda r: defer.Deferred.fromCoroutine(main(r, args, port)))
    finally:
        child.kill()
        child.wait()
