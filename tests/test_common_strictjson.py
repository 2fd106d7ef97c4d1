"""The strict JSON reader: what it refuses, and that errors name the source."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from maintd.common.strictjson import StrictJSONError, loads


class StrictJSONTests(unittest.TestCase):
    def refused(self, data: bytes | str, **kw: object) -> str:
        with self.assertRaises(StrictJSONError) as cm:
            loads(data, "node7 report", **kw)  # type: ignore[arg-type]
        msg = str(cm.exception)
        self.assertTrue(msg.startswith("node7 report: "), msg)
        self.assertNotIn("\n", msg)
        return msg

    def test_plain_documents_parse(self) -> None:
        self.assertEqual(loads(b'{"a": [1, 2.5, "x", null, true]}', "s"), {"a": [1, 2.5, "x", None, True]})

    def test_nan_and_infinity_refused(self) -> None:
        for text in ('{"x": NaN}', "[Infinity]", "-Infinity"):
            self.assertIn("is not JSON", self.refused(text))

    def test_duplicate_keys_refused(self) -> None:
        self.assertIn("duplicate key 'uuid'", self.refused('{"uuid": 1, "b": 2, "uuid": 3}'))

    def test_not_utf8_refused(self) -> None:
        self.assertIn("not UTF-8", self.refused(b'{"a": "\xff"}'))

    def test_size_bound(self) -> None:
        self.assertIn("exceeds the limit of 10", self.refused(b"[" + b"1," * 10 + b"1]", max_bytes=10))

    def test_depth_bound(self) -> None:
        self.assertIn("deeper than 5", self.refused("[" * 6 + "]" * 6, max_depth=5))
        self.assertEqual(loads("[" * 5 + "]" * 5, "s", max_depth=5), [[[[[]]]]])

    def test_pathological_nesting_is_an_error_not_a_recursion_error(self) -> None:
        self.refused("[" * 200_000 + "]" * 200_000, max_depth=None)
        self.refused('{"a":' * 200_000 + "1" + "}" * 200_000)

    def test_garbage_names_position(self) -> None:
        self.assertIn("line 1 column", self.refused('{"a": '))

    def test_object_hook_applies_after_checks(self) -> None:
        self.assertEqual(loads('{"a": {"b": 1}}', "s", object_hook=lambda d: sorted(d)), ["a"])

    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text()
                        | st.floats(allow_nan=False, allow_infinity=False),
                        lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=30))
    def test_round_trips_what_json_writes(self, value: object) -> None:
        self.assertEqual(loads(json.dumps(value), "s"), value)

    @given(st.binary(max_size=200))
    def test_random_bytes_only_raise_the_documented_error(self, data: bytes) -> None:
        try:
            loads(data, "fuzz")
        except StrictJSONError:
            pass
