"""Live load for the balancer, from mond reports (what 2.17's maintd balanced on).

Pure functions over the report objects mond serves (the round step fetches
them with :class:`maintd.cluster.mond.MondClient`):

* ``cpu-avg-load`` (category ``default``) per node: ``data.cpu_total`` is
  the node's CPU load; an instance that is not a Xen domain gets the share
  ``cpu_total * vcpus / used_vcpus`` of its primary node (used vCPUs as
  htools counts them: the node's own plus its online primaries').
* ``xen-cpu-avg-load`` per node: ``data`` maps Xen domain names to their
  CPU load; a Xen instance takes the value its primary reports, else any
  node's.
* ``kvm-inst-rss`` per node (2.17 monds): ``data`` maps instance names to
  their RSS in pages.  Used only when memory is over-committed (an instance
  policy ``memory-ratio`` above 1): an instance's memory weight is its RSS
  scaled by ``5 * (ratio - 1)``, a node's capacity is its instance memory
  in pages (256 per MiB).

Evacuated instances (moved off an offline/drained node by a recent round)
may lack load data: they get zero load and stay in the evacuated list until
their primary reports them again.  Missing data for any other instance is
an error (:class:`LoadError`), as in 2.17: balancing on guesses would move
instances for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from maintd.cluster.model import Cluster
from maintd.decide.balance.score import Util

XEN_HYPERVISORS = frozenset({"xen-pvm", "xen-hvm"})
PAGES_PER_MIB = 256.0

CPU_REPORT = ("default", "cpu-avg-load")
XEN_REPORT = ("default", "xen-cpu-avg-load")
RSS_REPORT = ("default", "kvm-inst-rss")


class LoadError(Exception):
    """Load data needed for balancing is missing or malformed (names the node/instance)."""


@attrs.frozen
class NodeReports:
    """The reports one node's mond answered (None: not asked or failed)."""

    cpu: Mapping[str, Any] | None = None
    xen: Mapping[str, Any] | None = None
    rss: Mapping[str, Any] | None = None


@attrs.frozen
class LiveLoad:
    """Per-instance utilisation for the planner, plus the evacuated list to keep."""

    util: Mapping[str, Util]
    mem_pool: Mapping[str, float] | None  # node -> memory capacity (pages); None: unused
    evacuated: tuple[str, ...]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


def node_cpu_load(node: str, report: Mapping[str, Any] | None) -> float | None:
    """``cpu_total`` of a ``cpu-avg-load`` report; None when absent; LoadError when malformed."""
    if report is None:
        return None
    data = report.get("data") if isinstance(report, Mapping) else None
    if not isinstance(data, Mapping):
        raise LoadError(f"node {node}: cpu-avg-load report has no data object")
    total = _number(data.get("cpu_total"))
    if total is None or total < 0:
        raise LoadError(f"node {node}: cpu-avg-load cpu_total {data.get('cpu_total')!r} is invalid")
    return total


def instance_map(node: str, what: str, report: Mapping[str, Any] | None) -> dict[str, float]:
    """The ``{instance: value}`` data of a per-instance report (bad entries dropped)."""
    if report is None:
        return {}
    data = report.get("data") if isinstance(report, Mapping) else None
    if not isinstance(data, Mapping):
        raise LoadError(f"node {node}: {what} report has no data object")
    out: dict[str, float] = {}
    for name, value in data.items():
        v = _number(value)
        if isinstance(name, str) and v is not None and v >= 0:
            out[name] = v
    return out


def memory_ratio(cluster: Cluster) -> float:
    """Largest instance-policy ``memory-ratio`` (2.17); 0 where policies lack it."""
    ratios = [0.0]
    for pol in [cluster.ipolicy] + [g.ipolicy for g in cluster.groups.values()]:
        v = _number(pol.get("memory-ratio")) if pol else None
        if v is not None:
            ratios.append(v)
    return max(ratios)


def used_vcpus(cluster: Cluster, node: str) -> int:
    n = cluster.nodes[node]
    total = n.cnos
    for name in n.primaries:
        inst = cluster.instances.get(name)
        if inst is not None and inst.admin_state != "offline" and not inst.forthcoming:
            total += inst.vcpus
    return total


def compute_load(
    cluster: Cluster,
    reports: Mapping[str, NodeReports],
    evacuated: Iterable[str] = (),
) -> LiveLoad:
    """Per-instance load from the nodes' reports; see the module docstring."""
    evac = set(evacuated)
    cpu: dict[str, float | None] = {}
    xen: dict[str, dict[str, float]] = {}
    for name in cluster.nodes:
        rep = reports.get(name, NodeReports())
        cpu[name] = node_cpu_load(name, rep.cpu)
        xen[name] = instance_map(name, "xen-cpu-avg-load", rep.xen)
    all_xen: dict[str, float] = {}
    for name in sorted(xen):
        for domain, v in xen[name].items():
            all_xen.setdefault(domain, v)
    util: dict[str, Util] = {}
    still_evacuated: list[str] = []
    problems: list[str] = []
    for name, inst in cluster.instances.items():
        pnode = cluster.nodes.get(inst.primary)
        offline = pnode is None or pnode.offline or pnode.drained
        if inst.hypervisor in XEN_HYPERVISORS:
            load = xen.get(inst.primary, {}).get(name)
            if load is None:
                load = all_xen.get(name)
            if load is None and not (offline or name in evac):
                problems.append(f"no Xen CPU data for instance {name}")
            util[name] = Util(cpu=load or 0.0, mem=0.0, dsk=0.0, net=0.0)
        else:
            node_load = cpu.get(inst.primary)
            if node_load is None:
                if not (offline or name in evac):
                    problems.append(f"no CPU data for node {inst.primary} of instance {name}")
                node_load = 0.0
            used = used_vcpus(cluster, inst.primary) if pnode is not None else 0
            w = node_load * inst.vcpus / used if used else 0.0
            util[name] = Util(cpu=w, mem=0.0, dsk=0.0, net=0.0)
    for name in sorted(evac):
        known = cluster.instances.get(name)
        if known is None:
            continue  # gone from the cluster
        if name in xen.get(known.primary, {}):
            continue  # load data available again
        still_evacuated.append(name)
    mem_pool: dict[str, float] | None = None
    ratio = memory_ratio(cluster)
    if ratio > 1.0:
        rss: dict[str, float] = {}
        for name in cluster.nodes:
            rss.update(instance_map(name, "kvm-inst-rss", reports.get(name, NodeReports()).rss))
        missing = sorted(set(cluster.instances) - set(rss))
        if missing:
            problems.append("no RSS information for " + ", ".join(missing[:10]))
        scale = max(0.0, (ratio - 1.0) * 5.0)
        util = {n: attrs.evolve(u, mem=scale * rss.get(n, 0.0)) for n, u in util.items()}
        mem_pool = {
            n: (node.mtotal - node.mnode) * PAGES_PER_MIB for n, node in cluster.nodes.items()
        }
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise LoadError("; ".join(problems[:5]) + more)
    return LiveLoad(util=util, mem_pool=mem_pool, evacuated=tuple(still_evacuated))
