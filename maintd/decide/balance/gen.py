"""Deterministic synthetic clusters for the planner's tests and benchmark.

One node group; nodes of a few hardware sizes; mostly DRBD instances plus
some plain and shared-storage ones, placed unevenly (a few nodes get more)
so there is something to balance.  Free memory and disk are consistent
with the placed instances, as on a real cluster.
"""

from __future__ import annotations

import random

from maintd.cluster.model import Cluster, Group, Instance, Node

_NODE_SIZES = (  # (memory MiB, disk MiB, cpus)
    (65536, 1_000_000, 16),
    (131072, 2_000_000, 32),
    (262144, 4_000_000, 64),
)


def generate_cluster(nodes: int, instances: int, seed: int = 1) -> Cluster:
    """A cluster of ``nodes`` nodes and up to ``instances`` instances (fixed by ``seed``)."""
    rnd = random.Random(seed)
    gname, guuid = "default", "uuid-default"
    names = [f"node{k:04d}.example.com" for k in range(nodes)]
    size = {n: _NODE_SIZES[rnd.randrange(len(_NODE_SIZES))] for n in names}
    nmem = 2048
    used_mem = dict.fromkeys(names, nmem)
    used_dsk = dict.fromkeys(names, 0)
    weights = [rnd.choice((1, 1, 1, 2, 4)) for _ in names]
    insts: dict[str, Instance] = {}
    prim: dict[str, list[str]] = {n: [] for n in names}
    sec: dict[str, list[str]] = {n: [] for n in names}
    for k in range(instances):
        name = f"inst{k:05d}.example.com"
        mem = rnd.choice((512, 1024, 2048, 4096, 8192))
        dsk = rnd.choice((10240, 20480, 51200, 102400))
        vcpus = rnd.choice((1, 1, 2, 2, 4, 8))
        kind = rnd.random()
        template = "drbd" if kind < 0.8 else ("plain" if kind < 0.9 else "sharedfile")
        status = "running" if rnd.random() < 0.92 else "ADMIN_down"
        placed = False
        for _attempt in range(20):
            p = rnd.choices(names, weights)[0]
            s = rnd.choice(names) if template == "drbd" and nodes > 1 else None
            if s == p:
                continue
            tm, td, _tc = size[p]
            local = template in ("drbd", "plain")
            need_mem = mem if status == "running" else 0
            if used_mem[p] + need_mem > tm * 0.95:
                continue
            if local and used_dsk[p] + dsk > td * 0.9:
                continue
            if s is not None:
                if used_dsk[s] + dsk > size[s][1] * 0.9:
                    continue
                used_dsk[s] += dsk
                sec[s].append(name)
            used_mem[p] += need_mem
            if local:
                used_dsk[p] += dsk
            prim[p].append(name)
            insts[name] = Instance(
                name=name,
                uuid=name,
                primary=p,
                secondaries=(s,) if s else (),
                disk_template=template,
                admin_state="up" if status == "running" else "down",
                oper_state=status == "running",
                status=status,
                memory=mem,
                minmem=mem,
                vcpus=vcpus,
                disk_sizes=(dsk,),
                spindles=(None,),
                spindle_use=1,
                auto_balance=rnd.random() < 0.97,
            )
            placed = True
            break
        if not placed:
            continue
    node_objs = {}
    for k, n in enumerate(names):
        tm, td, tc = size[n]
        node_objs[n] = Node(
            name=n,
            uuid=f"uuid-{n}",
            group=gname,
            master=k == 0,
            mtotal=tm,
            mnode=nmem,
            mfree=tm - used_mem[n],
            dtotal=td,
            dfree=td - used_dsk[n],
            ctotal=tc,
            cnos=1,
            spindles_total=1,
            spindles_free=0,
            primaries=tuple(prim[n]),
            secondaries=tuple(sec[n]),
        )
    group = Group(name=gname, uuid=guuid, nodes=tuple(names))
    return Cluster(
        name="bench.example.com",
        master=names[0] if names else "",
        groups={gname: group},
        nodes=node_objs,
        instances=insts,
    )
