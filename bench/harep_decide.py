"""Figures: harep's pure decisions over a large cluster (tags parsed, states, plans).

Prints how long one round's harep decisions take for 200 nodes and 4,000
instances with a mix of policies, results and broken nodes.  No threshold:
read the figures.
"""

from __future__ import annotations

import random
import time

from maintd.cluster.model import Cluster, Group, Instance, Node
from maintd.decide.harep.decide import Status, decide_without_jobs, plan_pending, tag_state
from maintd.decide.harep.tags import RepairResult, RepairTag, RepairType

P = "ganeti:watcher:autorepair:"


def build(nodes: int, instances: int, seed: int = 1) -> Cluster:
    rng = random.Random(seed)
    groups = {f"g{g}": Group(name=f"g{g}", uuid=f"g{g}", tags=[P + "failover"]) for g in range(4)}
    node_map = {}
    for i in range(nodes):
        name = f"node{i}"
        node_map[name] = Node(
            name=name,
            uuid=name,
            group=f"g{i % 4}",
            offline=rng.random() < 0.03,
            drained=rng.random() < 0.03,
            mtotal=65536,
            mfree=32768,
            dtotal=2_000_000,
            dfree=1_000_000,
        )
    names = list(node_map)
    insts = {}
    for i in range(instances):
        group = i % 4
        members = [n for n in names if node_map[n].group == f"g{group}"]
        p, s = rng.sample(members, 2)
        tags: list[str] = []
        roll = rng.random()
        if roll < 0.1:
            tags.append(P + rng.choice(["fix-storage", "migrate", "reinstall", "suspend"]))
        elif roll < 0.2:
            res = rng.choice(list(RepairResult))
            tags.append(RepairTag(RepairType.FAILOVER, f"id{i}", 1000 + i, (i,), res).format())
        elif roll < 0.25:
            tags.append(RepairTag(RepairType.FAILOVER, f"id{i}", 1000 + i, (i,)).format())
        tags.extend(f"app:tier{rng.randrange(5)}" for _ in range(3))
        insts[f"inst{i}"] = Instance(
            name=f"inst{i}",
            uuid=f"inst{i}",
            primary=p,
            secondaries=[s] if i % 3 else [],
            disk_template="drbd" if i % 3 else "plain",
            memory=1024,
            disk_sizes=[10240],
            tags=tags,
        )
    return Cluster(name="bench", master=names[0], groups=groups, nodes=node_map, instances=insts)


def main() -> None:
    for nodes, instances in ((50, 500), (200, 4000)):
        cluster = build(nodes, instances)
        free = frozenset(cluster.nodes)
        now = 2_000_000.0
        start = time.perf_counter()
        verdicts: dict[str, int] = {}
        for inst in cluster.instances.values():
            state = tag_state(inst.name, inst.tags)
            if state.status is Status.PENDING:
                assert state.current is not None
                jobs = state.current.jobs
                d = plan_pending(
                    cluster, inst, state, jobs, dict.fromkeys(jobs, "running"), now, free
                )
            else:
                d = decide_without_jobs(cluster, inst, state, now, free)
            verdicts[d.verdict.value] = verdicts.get(d.verdict.value, 0) + 1
        took = time.perf_counter() - start
        print(
            f"harep decisions: {nodes} nodes, {instances} instances: {took * 1000:.1f} ms "
            f"({took / instances * 1e6:.1f} us/instance); verdicts {dict(sorted(verdicts.items()))}"
        )


if __name__ == "__main__":
    main()
