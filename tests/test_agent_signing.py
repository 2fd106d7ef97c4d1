"""maintd.common.signing: confd's signed envelope, freshness, key files."""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from maintd.common import signing
from maintd.common.strictjson import StrictJSONError
from tests.tools import skip_or_fail

KEY = b"0123456789abcdef0123456789abcdef01234567\n"
NOW = 1_800_000_000.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10,
)


class SigningTests(SynchronousTestCase):
    def test_envelope_is_confds(self) -> None:
        """msg is the payload's JSON, salt the time, hmac = HMAC-SHA1(key, salt + msg)."""
        env = signing.sign({"status": "Ok"}, KEY, NOW + 0.7)
        self.assertEqual(set(env), {"msg", "salt", "hmac"})
        self.assertEqual(env["salt"], "1800000000")
        self.assertEqual(json.loads(env["msg"]), {"status": "Ok"})
        expected = hmac.new(KEY, (env["salt"] + env["msg"]).encode(), hashlib.sha1).hexdigest()
        self.assertEqual(env["hmac"], expected)

    def test_ganetis_own_serializer_verifies_ours(self) -> None:
        """Interop: Ganeti 3.0's serializer.LoadSignedJson (system Python) accepts
        our envelope, and ours accepts its DumpSignedJson."""
        import subprocess

        path = "/usr/share/ganeti/3.0"
        if not os.path.exists(os.path.join(path, "ganeti", "serializer.py")):
            skip_or_fail("Ganeti 3.0's Python library not installed (ganeti-3.0)")
        ours = json.dumps(signing.sign({"a": [1, 2]}, KEY, NOW))
        code = (
            f"import sys, json; sys.path.insert(0, {path!r})\n"
            "from ganeti import serializer\n"
            f"key = {KEY.decode()!r}\n"
            "data, salt = serializer.LoadSignedJson(sys.stdin.read(), key)\n"
            "print(json.dumps([data, salt]))\n"
            "sys.stdout.write(serializer.DumpSignedJson({'b': 3}, key, salt='1800000000').decode())\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        run = subprocess.run(["/usr/bin/python3", "-c", code], input=ours, text=True,
                             capture_output=True, env=env, timeout=60)
        if run.returncode != 0:
            skip_or_fail(f"Ganeti's serializer does not run here: {run.stderr[-300:]}")
        first, second = run.stdout.split("\n", 1)
        self.assertEqual(json.loads(first), [{"a": [1, 2]}, "1800000000"])
        self.assertEqual(signing.verify(json.loads(second), KEY, NOW, source="ganeti"),
                         ({"b": 3}, NOW))

    @settings(derandomize=True, max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(json_values, st.floats(min_value=-299, max_value=299))
    def test_round_trip_within_window(self, payload: object, skew: float) -> None:
        env = signing.sign(payload, KEY, NOW)
        got, when = signing.verify(env, KEY, NOW + skew, source="t")
        self.assertEqual((got, when), (payload, NOW))

    def test_refusals_say_why(self) -> None:
        env = signing.sign({"status": "evacuate"}, KEY, NOW)
        cases = {
            "bad signature": (dict(env, msg=env["msg"].replace("evacuate", "Ok")), KEY, NOW),
            "stale": (env, KEY, NOW + 301),
            "unsigned": ({"status": "evacuate"}, KEY, NOW),
            "malformed": (dict(env, hmac="zz"), KEY, NOW),
        }
        for kind, (doc, key, now) in cases.items():
            with self.assertRaises(signing.SignatureError) as cm:
                signing.verify(doc, key, now, source="agent on n2")
            self.assertEqual(cm.exception.kind, kind)
            self.assertTrue(str(cm.exception).startswith("agent on n2: "), str(cm.exception))
        with self.assertRaises(signing.SignatureError) as cm:
            signing.verify(env, b"another key\n", NOW, source="n")
        self.assertEqual(cm.exception.kind, "bad signature")

    def test_loads_unsigned_only_when_allowed(self) -> None:
        raw = b'{"status": "Ok"}'
        with self.assertRaises(signing.SignatureError):
            signing.loads(raw, KEY, NOW, source="s")
        self.assertEqual(signing.loads(raw, KEY, NOW, source="s", allow_unsigned=True),
                         ({"status": "Ok"}, False))
        signed = signing.dumps({"x": 1}, KEY, NOW)
        self.assertEqual(signing.loads(signed, KEY, NOW, source="s", allow_unsigned=True),
                         ({"x": 1}, True), "a signed one is still verified")
        with self.assertRaises(signing.SignatureError):
            signing.loads(signed, None, NOW, source="s", allow_unsigned=True)
        with self.assertRaises(StrictJSONError):
            signing.loads(b"\xff\xfe", KEY, NOW, source="s")

    def test_nested_signed_message_is_bounded(self) -> None:
        deep = "[" * 100 + "]" * 100
        env = signing.sign_text(deep, KEY, NOW)
        with self.assertRaises(signing.SignatureError) as cm:
            signing.verify(env, KEY, NOW, source="s")
        self.assertEqual(cm.exception.kind, "malformed")

    def test_read_key(self) -> None:
        d = self.mktemp()
        os.makedirs(d)
        path = os.path.join(d, "hmac.key")
        with self.assertRaises(signing.KeyFileError) as cm:
            signing.read_key(path)
        self.assertIn(path, str(cm.exception))
        with open(path, "wb") as f:
            f.write(b"")
        self.assertRaises(signing.KeyFileError, signing.read_key, path)
        with open(path, "wb") as f:
            f.write(KEY)
        self.assertEqual(signing.read_key(path), KEY, "the file's bytes, as Ganeti uses them")
        self.assertRaises(signing.KeyFileError, signing.read_key, d)
