"""A tiny fake of Ganeti's Luxi query socket, enough for the real ``harep``.

harep reads the cluster only over Luxi (``harep -L SOCKET``): four queries
(nodes, instances, groups, cluster info) and, for pending repairs,
``QueryJobs``.  Messages are JSON objects ending in ``\\x03``
(``{"method", "args"}`` in, ``{"success", "result"}`` out).  This fake
serves a :class:`maintd.cluster.model.Cluster` so the interoperability tests can run
harep on tags written by maintd.  Run without ``--dry-run``, harep submits
its jobs with ``SubmitManyJobs`` (a list of jobs, each a list of opcodes):
the fake records them (:attr:`FakeLuxi.submitted`), answers fake job ids
counting from 1000 and reports every job it does not know as a success.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.protocol import Factory, Protocol

from maintd.cluster.model import Cluster

EOM = b"\x03"

IPOLICY = {
    "minmax": [
        {
            "min": {
                "memory-size": 128,
                "disk-size": 0,
                "disk-count": 0,
                "cpu-count": 1,
                "nic-count": 0,
                "spindle-use": 0,
            },
            "max": {
                "memory-size": 32768,
                "disk-size": 1048576,
                "disk-count": 16,
                "cpu-count": 8,
                "nic-count": 8,
                "spindle-use": 12,
            },
        }
    ],
    "std": {
        "memory-size": 128,
        "disk-size": 1024,
        "disk-count": 1,
        "cpu-count": 1,
        "nic-count": 1,
        "spindle-use": 1,
    },
    "spindle-ratio": 32,
    "vcpu-ratio": 4,
    "disk-templates": ["drbd", "plain", "file", "diskless", "sharedfile"],
}


def _row(values: list[Any]) -> list[list[Any]]:
    return [[0, v] for v in values]


def query_answer(cluster: Cluster, what: str) -> dict[str, Any]:
    groups = cluster.groups
    if what == "node":
        data = [
            _row(
                [
                    n.name,
                    n.mtotal,
                    n.mnode,
                    n.mfree,
                    n.dtotal,
                    n.dfree,
                    n.ctotal or 8,
                    n.cnos,
                    n.offline,
                    n.drained,
                    n.vm_capable,
                    1,
                    groups[n.group].uuid,
                    sorted(n.tags),
                    False,
                    0,
                    0,
                    1.0,
                ]
            )
            for n in cluster.nodes.values()
        ]
    elif what == "instance":
        data = [
            _row(
                [
                    i.name,
                    i.disk,
                    i.memory,
                    i.vcpus,
                    "running" if i.running else "ADMIN_down",
                    i.primary,
                    list(i.secondaries),
                    sorted(i.tags),
                    i.auto_balance,
                    i.disk_template,
                    i.spindle_use,
                    list(i.disk_sizes),
                    [None for _ in i.disk_sizes],
                    False,
                ]
            )
            for i in cluster.instances.values()
        ]
    elif what == "group":
        data = [
            _row([g.uuid, g.name, g.alloc_policy, IPOLICY, sorted(g.tags)]) for g in groups.values()
        ]
    else:
        raise ValueError(f"unexpected query for {what!r}")
    return {"fields": [], "data": data}


class LuxiProtocol(Protocol):
    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while EOM in self.buffer:
            message, self.buffer = self.buffer.split(EOM, 1)
            self.transport.write(json.dumps(self.factory.answer(message)).encode() + EOM)  # type: ignore[attr-defined]


class FakeLuxi(Factory):
    protocol = LuxiProtocol

    def __init__(self, cluster: Cluster, job_status: Mapping[int, str]) -> None:
        self.cluster = cluster
        self.job_status = dict(job_status)
        self.methods: list[str] = []
        #: (job id, opcodes) of every job harep submitted, in order
        self.submitted: list[tuple[int, list[dict[str, Any]]]] = []
        self.next_job = 1000

    def answer(self, message: bytes) -> dict[str, Any]:
        try:
            request = json.loads(message)
            method, args = request["method"], request["args"]
            self.methods.append(method)
            if method == "Query":
                return {"success": True, "result": query_answer(self.cluster, args[0])}
            if method == "QueryClusterInfo":
                return {
                    "success": True,
                    "result": {
                        "tags": sorted(self.cluster.tags),
                        "ipolicy": IPOLICY,
                        "master": self.cluster.master,
                        "default_hypervisor": "kvm",
                    },
                }
            if method == "SubmitManyJobs":
                (jobs,) = args
                ids = []
                for ops in jobs:
                    self.next_job += 1
                    self.submitted.append((self.next_job, list(ops)))
                    ids.append([True, self.next_job])
                return {"success": True, "result": ids}
            if method == "QueryJobs":
                jobs, _fields = args
                return {
                    "success": True,
                    "result": [[self.job_status.get(int(j), "success")] for j in jobs],
                }
            return {"success": False, "result": ["LuxiError", f"unsupported method {method}"]}
        except Exception as err:  # a test helper: report anything back to harep
            return {"success": False, "result": ["LuxiError", str(err)]}
