"""The strict JSON reader: what it refuses, and that errors name the source."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from maintd.common.strictjson import StrictJSONError, loads

#: The suite runs on busy machines: no per-example deadline, no "generation is slow" check.
LOADED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


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

    @LOADED
    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text()
                        | st.floats(allow_nan=False, allow_infinity=False),
                        lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=30))
    def test_round_trips_what_json_writes(self, value: object) -> None:
        self.assertEqual(loads(json.dumps(value), "s"), value)

    @LOADED
    @given(st.binary(max_size=200))
    def test_random_bytes_only_raise_the_documented_error(self, data: bytes) -> None:
        try:
            loads(data, "fuzz")
        except StrictJSONError:
            pass

    def test_numbers_beyond_a_float_are_refused_not_infinity(self) -> None:
        # json.loads reads 1e999 as inf: Infinity by another name
        for text in ("1e999", "[-1e400]", '{"load": 2E+308}'):
            self.assertIn("is too large", self.refused(text))
        self.assertEqual(loads("[1.5e300, -2e-400]", "s"), [1.5e300, -0.0])

    def test_lone_surrogates_are_refused(self) -> None:
        # json.loads accepts "\ud800"; the string then cannot be written as
        # UTF-8 (the state file, /1/status) and every later write fails.
        for text in (r'"\ud800"', r'"\udc00"', r'["\ud83d x"]', r'{"\ud83d": 1}',
                     r'"\\\ud800"', r'"\ud800\ud800"'):
            self.assertIn("lone surrogate", self.refused(text), text)
        self.assertIn("not UTF-8", self.refused('"\ud800"'))  # a str holding one
        self.assertEqual(loads(r'["\ud83d\ude00", "\\ud800", "\u00e9"]', "s"),
                         ["\U0001f600", "\\ud800", "\u00e9"])

    @LOADED
    @given(st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010)
                   | st.sampled_from("a\\u\""), max_size=12))
    def test_whatever_parses_can_be_written_back_as_strict_utf8(self, value: str) -> None:
        for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
            try:
                got = loads(text, "fuzz")
            except StrictJSONError:
                continue
            json.dumps(got, ensure_ascii=False, allow_nan=False).encode("utf-8")
