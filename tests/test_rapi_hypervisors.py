"""Each instance's hypervisor on clusters that enable several.

Ganeti's bulk instance answer has no hypervisor field, so on a mixed
Xen/KVM cluster the snapshot reads ``/2/query/instance?fields=name,hypervisor``
(the evacuated list and the balancer's live load treat Xen and KVM apart).
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from maintd.cluster.rapi.loader import parse_query_column
from tests.simulators import client_for, start_simulator

DATA = os.path.join(os.path.dirname(__file__), "data", "rapi")


class ParseQueryTests(SynchronousTestCase):
    def test_real_ganeti_answer(self) -> None:
        # captured from a real Ganeti 3.0 cluster (fake hypervisor)
        with open(os.path.join(DATA, "query-instance-hypervisor.json")) as f:
            answer = json.load(f)
        hvs = parse_query_column(answer, "name", "hypervisor")
        self.assertEqual(len(hvs), 6)
        self.assertEqual(hvs["inst1.sandbox.test"], "fake")

    def test_unknown_cells_are_left_out(self) -> None:
        answer = {
            "fields": [{"name": "name"}, {"name": "hypervisor"}],
            "data": [[[0, "a"], [0, "kvm"]], [[0, "b"], [1, None]]],
        }
        self.assertEqual(parse_query_column(answer, "name", "hypervisor"), {"a": "kvm"})

    def test_bad_shapes_name_the_problem(self) -> None:
        for answer, words in [
            ([], "not a JSON object"),
            ({"fields": []}, "lacks 'fields' or 'data'"),
            ({"fields": [{"name": "name"}], "data": []}, "lacks the fields"),
            (
                {"fields": [{"name": "name"}, {"name": "hypervisor"}], "data": [[[0, "a"]]]},
                "wrong shape",
            ),
        ]:
            with self.assertRaises(ValueError) as cm:
                parse_query_column(answer, "name", "hypervisor")
            self.assertIn(words, str(cm.exception))


class MixedClusterTests(TestCase):
    def setUp(self) -> None:
        self.sim = start_simulator(
            self,
            os.path.abspath(self.mktemp()),
            scenario=os.path.join(DATA, "mixed-hypervisors.json"),
            job_seconds=0,
            mond_port=0,
        )
        self.client = client_for(self, self.sim)

    @defer.inlineCallbacks
    def test_each_instance_gets_its_own_hypervisor(self) -> defer.Generator[object, object, None]:
        cluster = yield defer.ensureDeferred(self.client.load_cluster())
        self.assertEqual(cluster.instances["xen1.sim.test"].hypervisor, "xen-pvm")
        self.assertEqual(cluster.instances["kvm1.sim.test"].hypervisor, "kvm")

    @defer.inlineCallbacks
    def test_query_failure_keeps_the_default_with_a_warning(
        self,
    ) -> defer.Generator[object, object, None]:
        warnings: list[dict[str, object]] = []

        def observe(event: dict[str, object]) -> None:
            if event.get("log_level") == LogLevel.warn:
                warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        real = self.client.instance_hypervisors

        async def broken() -> dict[str, str]:
            from maintd.cluster.rapi.errors import RapiServerError

            raise RapiServerError("HTTP 502", method="GET", url=self.sim.rapi_url)

        self.client.instance_hypervisors = broken  # type: ignore[method-assign]
        cluster = yield defer.ensureDeferred(self.client.load_cluster())
        self.client.instance_hypervisors = real  # type: ignore[method-assign]
        self.assertEqual(cluster.instances["xen1.sim.test"].hypervisor, "kvm")
        self.assertEqual(len(cluster.instances), 2)
        self.assertTrue(any("cannot read instance hypervisors" in str(w.get("log_format")) for w in warnings))
