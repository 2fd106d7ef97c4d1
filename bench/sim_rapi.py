"""Simulator speed with 1,000 nodes / 20,000 instances: load, bulk RAPI, jobs, snapshot.

Prints figures; no thresholds (run with ``make bench``).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer, task

from maintd.cluster import model
from maintd.sim.cluster import SimCluster
from maintd.sim.rapi import RapiFront
from maintd.sim.runtime import Simulation

NODES, INSTANCES, GROUPS = 1000, 20000, 10


def build() -> model.Cluster:
    rng = random.Random(42)
    groups = {f"g{g}": model.Group(name=f"g{g}", uuid=f"uuid-g{g}") for g in range(GROUPS)}
    names = [f"node{i}.bench.test" for i in range(NODES)]
    nodes = {
        n: model.Node(
            name=n,
            uuid=f"uuid-{n}",
            group=f"g{i % GROUPS}",
            mtotal=262144,
            mnode=4096,
            mfree=150000,
            dtotal=8 * 1024 * 1024,
            dfree=6 * 1024 * 1024,
            ctotal=64,
        )
        for i, n in enumerate(names)
    }
    by_group: dict[str, list[str]] = {}
    for n in nodes.values():
        by_group.setdefault(n.group, []).append(n.name)
    instances = {}
    for i in range(INSTANCES):
        pnode = names[i % NODES]
        members = by_group[nodes[pnode].group]
        snode = rng.choice([m for m in members if m != pnode])
        drbd = i % 4 != 0
        name = f"inst{i}.bench.test"
        instances[name] = model.Instance(
            name=name,
            uuid=f"uuid-{name}",
            primary=pnode,
            secondaries=[snode] if drbd else [],
            disk_template="drbd" if drbd else "plain",
            memory=4096,
            vcpus=2,
            disk_sizes=[20480],
        )
    return model.Cluster(
        name="bench", master=names[0], groups=groups, nodes=nodes, instances=instances
    )


def timed(label: str, fn: Any) -> Any:
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {(time.perf_counter() - start) * 1000:.1f} ms")
    return result


def main() -> None:
    snapshot = timed("build model (1000 nodes, 20000 instances)", build)
    cluster = timed("SimCluster.from_model", lambda: SimCluster.from_model(snapshot, (9, 9)))
    clock = task.Clock()
    sim = Simulation(cluster, clock, job_seconds=0)
    front = RapiFront(sim, None)
    http = StubTreq(front.resource())

    def get(path: str) -> bytes:
        d = defer.ensureDeferred(_get(http, path))
        results: list[bytes] = []
        d.addCallback(results.append)
        http.flush()
        return results[0]

    for path in ("/2/nodes?bulk=1", "/2/instances?bulk=1", "/2/groups?bulk=1", "/2/info"):
        body = timed(f"GET {path} (cold, encode)", lambda p=path: get(p))
        timed(f"GET {path} (cached)", lambda p=path: get(p))
        print(f"  {len(body) / 1e6:.1f} MB")
    job = sim.jobs.submit({"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "inst1.bench.test"})
    timed("one migrate job (start+finish)", lambda: (clock.advance(0), clock.advance(0)))
    print(f"  job status: {sim.jobs.jobs[job].status}")
    timed("GET /2/instances?bulk=1 after a change", lambda: get("/2/instances?bulk=1"))
    timed("GET /2/nodes?bulk=1 after a change", lambda: get("/2/nodes?bulk=1"))
    timed("to_model snapshot", cluster.to_model)
    doc = timed("model.to_json", lambda: model.to_json(cluster.to_model()))
    timed("json.dumps snapshot", lambda: json.dumps(doc))


async def _get(http: Any, path: str) -> bytes:
    resp = await http.get("http://127.0.0.1" + path)
    return await resp.content()


if __name__ == "__main__":
    main()
