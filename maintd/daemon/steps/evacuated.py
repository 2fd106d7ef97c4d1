"""Round step: prune the evacuated list (``/1/evacuated``), balancing on or off.

Runs before the steps that add to the list (incident handling, harep,
balancing), so an instance whose move was just submitted is never judged on
its old primary's report.  Only when the list is not empty: instances gone
from the cluster leave it; the other instances' primaries (unless offline)
are asked for ``xen-cpu-avg-load``, and every instance its primary reports
leaves it.  A node whose mond fails keeps its instances on the list (one log
line per round names the nodes).  Pruning changes only maintd's own state,
so it also happens in dry-run.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger

from maintd.cluster.mond import MondError
from maintd.decide.balance.load import XEN_REPORT, LoadError, instance_map
from maintd.decide.evacuation import nodes_to_ask, remaining

log = Logger()


async def evacuated_step(ctx: Any) -> None:
    cluster = ctx.cluster
    listed = tuple(ctx.state.evacuated)
    if cluster is None or not listed:
        return
    nodes = nodes_to_ask(cluster, listed)
    reported: dict[str, set[str]] = {}
    failed: list[str] = []
    if nodes and ctx.mond is not None:
        mond = ctx.mond

        async def one(node: Any) -> set[str]:
            report = await mond.report(node, *XEN_REPORT)
            try:
                return set(instance_map(node.name, "xen-cpu-avg-load", report))
            except LoadError as err:
                raise MondError(node.name, str(err)) from None

        got = await mond.gather(nodes, one)
        for name, result in sorted(got.items()):
            if isinstance(result, MondError):
                failed.append(str(result))
            else:
                reported[name] = result
    if failed:
        log.warn(
            "evacuated list: instances kept on it, no xen-cpu-avg-load report: {errors}",
            errors="; ".join(failed),
        )
    keep = remaining(cluster, listed, reported)
    if keep == listed:
        return
    for name in listed:
        if name not in keep:
            why = "gone from the cluster" if name not in cluster.instances else "load data is back"
            log.info("evacuated list: {instance} leaves it ({why})", instance=name, why=why)
    ctx.notes.append({"step": "evacuated", "removed": [n for n in listed if n not in keep]})
    await ctx.commit(attrs.evolve(ctx.state, evacuated=keep))
