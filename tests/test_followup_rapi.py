"""RapiClient.load_cluster: one read failing for good stops its siblings."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import NOT_DONE_YET

from maintd.cluster.rapi.errors import RapiAuthError, RapiServerError
from tests.test_rapi_client import ClientTestBase
from tests.test_rapi_helpers import err_sample, read_routes


class LoadClusterFailureTests(ClientTestBase):
    def paths(self) -> list[str]:
        return [s.path for s in self.recorder.seen]

    def test_siblings_stop_when_one_read_fails(self) -> None:
        routes: dict[tuple[str, str], Any] = read_routes()
        routes[("GET", "/2/instances")] = err_sample(401, "err-401.json")  # final at once
        routes[("GET", "/2/nodes")] = (503, b"busy")  # retried with back-off
        routes[("GET", "/2/groups")] = NOT_DONE_YET  # still in flight
        c = self.make(routes, read_retries=5, timeout=30)
        d = Deferred.fromCoroutine(c.load_cluster())
        self.stub.flush()
        # The 401 ends the snapshot without the clock moving: not after the
        # nodes read's retries (0.5+1+2+4+8 s) or the groups read's timeout.
        self.failureResultOf(d, RapiAuthError)
        self.assertEqual(self.clock.getDelayedCalls(), [], "no retry or timeout left")
        self.clock.advance(120)
        self.stub.flush()
        self.assertEqual(self.paths().count("/2/nodes"), 1, "the 503 read is not retried")

    def test_exhausted_retries_stop_the_slow_siblings(self) -> None:
        routes: dict[tuple[str, str], Any] = read_routes()
        routes[("GET", "/2/info")] = (503, b"busy")
        routes[("GET", "/2/instances")] = NOT_DONE_YET
        c = self.make(routes, read_retries=2, timeout=30)
        d = Deferred.fromCoroutine(c.load_cluster())
        self.stub.flush()
        for _ in range(100):  # the two retries of /2/info: at most 0.75 + 1.5 s
            if d.called:
                break
            self.clock.advance(0.05)
            self.stub.flush()
        self.failureResultOf(d, RapiServerError)
        self.assertLess(self.clock.seconds(), 3, "ended with /2/info, not the 30 s timeout")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.paths().count("/2/info"), 3)

    def test_success_unchanged(self) -> None:
        c = self.make()
        cluster = self.result(c.load_cluster())
        self.assertEqual(len(cluster.instances), 6)
        self.assertEqual(self.clock.getDelayedCalls(), [])
