"""State replication to the node agents (issue 13 item 2), the daemon's side.

:class:`Replication` listens to the store: after each commit it sends the
state, signed with the cluster HMAC key (:func:`maintd.decide.replica.payload`),
to the agents on the master candidates (the master included), coalescing
commits that come while a push is under way.  An agent that keeps a newer
serial (written by an earlier master whose copy this daemon did not take)
makes the store raise its serial above it, so the next push is stored.

At start (:mod:`maintd.daemon.steps.replica`, first step of the first
round) the newest signed copy is taken when the local state is missing or
older (:func:`maintd.decide.replica.choose`); reconciliation with Ganeti's
job queue follows in the same round.  Without agents, or none answering,
the daemon goes on with its local state: reconciliation alone still
prevents every duplicate job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from maintd.cluster.model import Cluster, Node
from maintd.cluster.replica import ReplicaClient, ReplicaError
from maintd.common import signing
from maintd.daemon.state import MaintState
from maintd.decide.replica import payload

log = Logger()


def candidates(cluster: Cluster) -> list[Node]:
    """The nodes whose agents keep replicas: online master candidates and the master."""
    return sorted((n for n in cluster.nodes.values()
                   if (n.master_candidate or n.master) and not n.offline),
                  key=lambda n: n.name)


class Replication:
    def __init__(self, store: Any, client: ReplicaClient, key: bytes,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.client = client
        self.key = key
        self.wallclock = wallclock
        self.nodes: list[Node] = []
        #: The start-up copy was looked for (pushes wait for that).
        self.fetched = False
        self._dirty = False
        self._running: defer.Deferred[None] | None = None
        #: Nodes whose last push failed (logged once until it works again).
        self._failing: set[str] = set()
        self.pushed = 0

    def set_nodes(self, cluster: Cluster) -> None:
        nodes = candidates(cluster)
        if [n.name for n in nodes] != [n.name for n in self.nodes]:
            new = {n.name for n in nodes} - {n.name for n in self.nodes}
            self.nodes = nodes
            if new:
                self.changed(self.store.state)

    def changed(self, state: MaintState) -> None:
        """Store listener: push ``state`` (the newest when several come quickly)."""
        if not self.fetched or not self.nodes:
            return
        self._dirty = True
        if self._running is None:
            d = defer.Deferred.fromCoroutine(self._push_loop())
            if not d.called:  # (a push that completed at once has nothing to wait for)
                self._running = d

    async def wait(self) -> None:
        """Until no push is under way (tests, shutdown)."""
        while self._running is not None:
            await self._running

    async def _push_loop(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                await self._push(self.store.state)
        except Exception:
            log.failure("replication: push failed")
        finally:
            self._running = None

    async def _push(self, state: MaintState) -> None:
        body = signing.dumps(payload(state), self.key, self.wallclock())
        nodes = list(self.nodes)
        results = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(self.client.put(n, body)) for n in nodes],
            consumeErrors=True)
        newer = 0
        for node, (ok, result) in zip(nodes, results, strict=True):
            if not ok:
                err = result.value  # type: ignore[union-attr]
                if node.name not in self._failing:
                    self._failing.add(node.name)
                    text = str(err) if isinstance(err, ReplicaError) else repr(err)
                    log.warn("replication: serial {serial} not stored: {error}",
                             serial=state.serial, error=text)
                continue
            if node.name in self._failing:
                self._failing.discard(node.name)
                log.info("replication: the agent on {node} takes replicas again",
                         node=node.name)
            if result is not None and result > state.serial:
                newer = max(newer, result)
        self.pushed += 1
        if newer:
            log.info("replication: an agent keeps serial {kept}, newer than ours ({serial}); "
                     "raising our serial", kept=newer, serial=state.serial)
            self.store.raise_serial(newer)  # a commit: pushes again
