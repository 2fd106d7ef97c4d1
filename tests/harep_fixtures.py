"""Small clusters for the harep tests (pure values)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from maintd.cluster.model import Cluster, Group, Instance, Node

P = "ganeti:watcher:autorepair:"


def make_cluster(
    *,
    offline: Iterable[str] = (),
    drained: Iterable[str] = (),
    cluster_tags: Iterable[str] = (),
    group_tags: Iterable[str] = (),
    instances: Iterable[Instance] = (),
    nodes: int = 5,
    dfree: Mapping[str, int] | None = None,
) -> Cluster:
    """Group ``g1`` with nodes n1..nN (online, 8 GiB free memory, 100 GiB free disk)."""
    off = set(offline)
    dr = set(drained)
    names = [f"n{i}" for i in range(1, nodes + 1)]
    node_map = {
        n: Node(
            name=n,
            uuid=f"uuid-{n}",
            group="g1",
            pip=f"127.0.0.{i}",
            offline=n in off,
            drained=n in dr,
            master=(n == "n1"),
            mtotal=16384,
            mfree=8192,
            dtotal=204800,
            dfree=(dfree or {}).get(n, 102400),
        )
        for i, n in enumerate(names, start=1)
    }
    groups = {"g1": Group(name="g1", uuid="uuid-g1", nodes=names, tags=group_tags)}
    insts = {i.name: i for i in instances}
    return Cluster(
        name="cluster",
        master="n1",
        groups=groups,
        nodes=node_map,
        instances=insts,
        tags=cluster_tags,
    )


def drbd(name: str = "inst1", primary: str = "n2", secondary: str = "n3", **kw) -> Instance:
    base = dict(
        name=name,
        uuid=f"uuid-{name}",
        primary=primary,
        secondaries=(secondary,),
        disk_template="drbd",
        memory=1024,
        disk_sizes=(10240,),
    )
    base.update(kw)
    return Instance(**base)


def plain(name: str = "inst1", primary: str = "n2", **kw) -> Instance:
    base = dict(
        name=name,
        uuid=f"uuid-{name}",
        primary=primary,
        disk_template="plain",
        memory=1024,
        disk_sizes=(10240,),
    )
    base.update(kw)
    return Instance(**base)


def with_tags(inst: Instance, *tags: str) -> Instance:
    return attrs.evolve(inst, tags=frozenset(inst.tags) | set(tags))
