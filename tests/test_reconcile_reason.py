"""The job reason format (maintd.decide.reason): written, parsed, not ours when it does not parse."""

from __future__ import annotations

import json
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from maintd.decide import reason as R

DATA = os.path.join(os.path.dirname(__file__), "data", "rapi")
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,40}\Z")
digests = st.one_of(st.just(""), st.from_regex(r"\A[0-9a-f]{1,64}\Z"))


class FormatParse(unittest.TestCase):
    def test_incident_round_trip(self) -> None:
        text = R.format_reason("incident", UUID, "abcdef012345")
        self.assertEqual(text, f"maintd:1:incident:{UUID}:abcdef012345")
        self.assertEqual(R.parse_reason(text), R.Reason("incident", UUID, "abcdef012345"))

    def test_no_digest_is_a_dash(self) -> None:
        text = R.format_reason("balance", "round-7", None)
        self.assertEqual(text, "maintd:1:balance:round-7:-")
        self.assertEqual(R.parse_reason(text), R.Reason("balance", "round-7", ""))

    @given(kind=st.sampled_from(["harep", "balance"]), ident=ids, digest=digests)
    def test_round_trip(self, kind: str, ident: str, digest: str) -> None:
        self.assertEqual(R.parse_reason(R.format_reason(kind, ident, digest)),
                         R.Reason(kind, ident, digest))

    def test_values_the_format_cannot_carry(self) -> None:
        for args in [("repair", "x", ""), ("incident", "not-a-uuid", ""),
                     ("harep", "a:b", ""), ("harep", "", ""), ("harep", "x y", ""),
                     ("harep", "inst1", "XYZ"), ("incident", UUID.upper(), "")]:
            with self.subTest(args=args), self.assertRaises(R.ReasonError):
                R.format_reason(*args)

    def test_unparseable_is_not_ours(self) -> None:
        for text in [None, 17, "", "maintd balance", "maintd harep inst1",
                     f"maintd:2:incident:{UUID}:-", f"maintd:1:incident:{UUID}",
                     "maintd:1:incident:garbage:-", f"maintd:1:incident:{UUID}:-:extra",
                     f"maintd:1:other:{UUID}:-", f" maintd:1:incident:{UUID}:-",
                     f"maintd:1:incident:{UUID}:ABC", "gnt-instance migrate"]:
            with self.subTest(text=text):
                self.assertIsNone(R.parse_reason(text))

    def test_legacy_incident_reason(self) -> None:
        self.assertEqual(R.parse_reason(f"maintd incident {UUID}"), R.Reason("incident", UUID, ""))
        self.assertIsNone(R.parse_reason("maintd incident 1234"))


class Digest(unittest.TestCase):
    def test_equal_pairs_equal_digests(self) -> None:
        a = R.report_digest("n-uuid", {"status": "evacuate", "details": "disk"})
        b = R.report_digest("n-uuid", {"details": "disk", "status": "evacuate"})
        self.assertEqual(a, b)
        self.assertEqual(len(a), R.DIGEST_LEN)
        self.assertNotEqual(a, R.report_digest("other", {"status": "evacuate", "details": "disk"}))
        self.assertNotEqual(a, R.report_digest("n-uuid", {"status": "evacuate", "details": "cpu"}))
        # usable in a reason
        self.assertIsNotNone(R.parse_reason(R.format_reason("incident", UUID, a)))


class Trail(unittest.TestCase):
    def test_job_reason_from_real_job_shape(self) -> None:
        ours = R.format_reason("incident", UUID, "0123456789ab")
        job = {"id": 20, "ops": [{"OP_ID": "OP_TAGS_SET", "reason": [
            ["gnt:user", ours, 1795575763685891840],
            ["gnt:library:rlib2:nodes_name_tags", "", 1795575763685899520],
            ["gnt:opcode:tags_set", "job=20;index=0", 1795575763688294000]]}]}
        job = json.loads(json.dumps(job))
        self.assertEqual(R.job_reason(job["ops"]), R.Reason("incident", UUID, "0123456789ab"))

    def test_other_sources_and_shapes_are_not_ours(self) -> None:
        ours = R.format_reason("incident", UUID, "")
        self.assertIsNone(R.job_reason([{"reason": [["gnt:client:gnt-node", ours, 1]]}]))
        self.assertIsNone(R.job_reason([{"reason": [["gnt:user", "maintd test", 1]]}]))
        self.assertIsNone(R.job_reason(None))
        self.assertIsNone(R.job_reason([{"reason": "x"}, "op", {"reason": [["gnt:user"]]}]))
        # the sample jobs of the real cluster carry no maintd reason
        with open(os.path.join(DATA, "jobs-bulk.json")) as f:
            jobs = json.load(f)
        self.assertTrue(jobs)
        self.assertEqual([j["id"] for j in jobs if R.job_reason(j["ops"])], [])
