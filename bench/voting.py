"""How long one master vote takes over N fake node daemons (TLS on 127.x.y.z).

Prints the wall time of one vote with the blocking startup client (threads)
and with the Twisted run-time client, for a few cluster sizes.  Figures
only; nothing is asserted.
"""

from __future__ import annotations

import tempfile
import time

from twisted.internet import defer, task

from maintd.cluster.voting import BlockingNodedClient, NodedTLS, Tally, TwistedNodedClient
from tests.test_voting_fakes import Certs, start_nodes

ME = "node1.example.com"


def main(reactor: object) -> defer.Deferred[None]:
    return defer.Deferred.fromCoroutine(run(reactor))


async def run(reactor: object) -> None:
    with tempfile.TemporaryDirectory() as d:
        certs = Certs(d)
        tls = NodedTLS.load(certs.cluster.path)
        for count in (3, 30, 100):
            nodes = start_nodes(count, certs.cluster.path, certs.cluster.path)
            try:
                for n in nodes:
                    n.vote_for(ME)
                endpoints: dict[str, tuple[str, int] | str | None] = {
                    f"node{i}.example.com": (n.host, n.port) for i, n in enumerate(nodes, 1)
                }
                blocking = BlockingNodedClient(tls, timeout=10)
                t0 = time.perf_counter()
                tally = Tally(ME, tuple(blocking.gather(endpoints)))
                t1 = time.perf_counter()
                assert tally.in_favor == count, tally.describe()
                twisted_client = TwistedNodedClient(reactor, tls, timeout=10)
                t2 = time.perf_counter()
                ballots = await twisted_client.gather(endpoints)
                t3 = time.perf_counter()
                assert Tally(ME, tuple(ballots)).in_favor == count
                print(f"vote over {count:4d} nodes: blocking client {t1 - t0:6.3f}s,"
                      f" twisted client {t3 - t2:6.3f}s")
            finally:
                for n in nodes:
                    n.stop()


if __name__ == "__main__":
    task.react(main)
