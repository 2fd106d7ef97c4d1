"""Property tests (hypothesis) of the daemon's input boundaries (issue 16, item 6).

- the HTTP API: random methods, paths, headers and raw bytes through the
  daemon's HTTP channel: every answer is a 2xx/4xx JSON document, nothing is
  logged above debug, no exception escapes;
- the node-report validator: random and mutated reports raise nothing but
  :class:`MondError`, and what passes can be stored and served as strict JSON;
- the state-file loader: random and mutated state files raise nothing but
  :class:`StoreError`, and what loads is written back identically.

The example counts are kept small for ``make test``; raise them with
``MAINTD_FUZZ_EXAMPLES=5000 .venv/bin/trial tests.test_fuzz_boundaries``.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.model import Node
from maintd.cluster.mond import MondClient, MondError, validate_diagnose
from maintd.common import strictjson
from maintd.daemon import store as store_mod
from maintd.daemon.api import StateAPI
from maintd.daemon.httpguard import HttpLimits
from maintd.daemon.store import StoreError

from .test_core_api import STATE
from .test_core_store import sample_state

#: No deadline: the machine running the suite may be busy (a deadline is a
#: wall-clock race); the examples are bounded instead.
FUZZ = settings(
    max_examples=int(os.environ.get("MAINTD_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=25,
)


class _Logs:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> _Logs:
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def loud(self) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e.get("log_level", LogLevel.info) > LogLevel.debug or "log_failure" in e]


# --------------------------------------------------------------------------
# HTTP API

METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
                           "CONNECT", "get", "G\x7fT", "X" * 300]) | st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
PATH_PARTS = st.sampled_from(["1", "status", "jobs", "evacuated", "last-round", "overview", "",
                              "..", ".", "%ff", "%00", "%2f", "\u00e9", "a" * 500])
PATHS = st.one_of(
    st.lists(PATH_PARTS, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.binary(max_size=40).map(lambda b: "/" + quote_from_bytes(b, safe="/%?&=;")),
    st.text(max_size=30).map(lambda t: "/" + t.replace(" ", "").replace("\r", "").replace("\n", "")),
)
QUERY = st.one_of(st.just(""), st.text(max_size=30).map(lambda t: "?" + quote_from_bytes(
    t.encode("utf-8", "surrogatepass"), safe="=&")))
HEADER_NAMES = st.sampled_from(["Host", "Accept-Encoding", "Connection", "Content-Length",
                                "Transfer-Encoding", "Expect", "Upgrade", "X-Fuzz", "Cookie",
                                "Content-Type"])
HEADER_VALUES = st.sampled_from(["gzip", "gzip;q=0", "close", "keep-alive", "chunked", "0",
                                 "-1", "99999999999999999999", "100-continue", "h2c", ""]) | \
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.1x", ""])


def _request(method: str, path: str, query: str, version: str,
             headers: list[tuple[str, str]], body: bytes) -> bytes:
    line = f"{method} {path}{query} {version}".rstrip()
    head = "".join(f"{n}: {v}\r\n" for n, v in headers)
    return (line + "\r\n" + head + "\r\n").encode("utf-8", "surrogateescape") + body


def _responses(raw: bytes, heads: list[bool]) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Responses in a byte stream; bodies framed by Content-Length (or to the end);
    ``heads[n]``: the n-th request was a HEAD (no body, whatever the length says)."""
    out: list[tuple[int, dict[bytes, bytes], bytes]] = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head {raw[:200]!r}"
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ")
        assert status[0] in (b"HTTP/1.1", b"HTTP/1.0"), lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", str(len(rest)).encode()))
        code = int(status[1])
        if 100 <= code < 200:  # an interim answer (100 Continue to "Expect:"): no body
            raw = rest
            continue
        # the answer to a HEAD has no body, unless its request line could not
        # be parsed (a 400 that closes the connection: the body is all that is left)
        if len(out) < len(heads) and heads[len(out)] and not (
            code == 400 and headers.get(b"connection") == b"close"
        ):
            length = 0
        out.append((code, headers, rest[:length]))
        raw = rest[length:]
    return out


class HttpFuzzTests(SynchronousTestCase):
    def exchange(
        self, *chunks: bytes, heads: list[bool] | None = None
    ) -> tuple[list[Any], list[dict[str, Any]], bytes]:
        clock = Clock()
        api = StateAPI(STATE)
        site = api.site(limits=HttpLimits(), reactor=clock)
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        with _Logs() as logs:
            proto.makeConnection(transport)
            for chunk in chunks:
                if transport.disconnecting:
                    break
                proto.dataReceived(chunk)
            clock.advance(3600)  # every timeout fires: nothing may be logged then either
            proto.connectionLost(None)
        return _responses(transport.value(), heads or []), logs.loud(), transport.value()

    def check(self, responses: list[Any], loud: list[dict[str, Any]], raw: bytes) -> None:
        self.assertEqual(loud, [])
        for code, headers, body in responses:
            self.assertTrue(200 <= code < 300 or 400 <= code < 500, (code, raw[:300]))
            self.assertEqual(headers.get(b"content-type"), b"application/json", raw[:300])
            if body and headers.get(b"content-encoding") != b"gzip":
                strictjson.loads(body, "answer")

    @FUZZ
    @given(METHODS, PATHS, QUERY, VERSIONS,
           st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
           st.binary(max_size=20), st.integers(min_value=1, max_value=8))
    def test_random_requests_get_json_answers_and_log_nothing(
        self, method: str, path: str, query: str, version: str,
        headers: list[tuple[str, str]], body: bytes, pieces: int,
    ) -> None:
        data = _request(method, path, query, version, [("Host", "x"), *headers], body)
        # the same bytes in one read (the shortcut) and split (twisted.web)
        step = max(1, len(data) // pieces)
        for chunks in ([data], [data[i:i + step] for i in range(0, len(data), step)]):
            responses, loud, raw = self.exchange(*chunks, heads=[method == "HEAD"])
            self.check(responses, loud, raw)

    @FUZZ
    @given(st.binary(max_size=300))
    def test_random_bytes_get_json_answers_and_log_nothing(self, data: bytes) -> None:
        self.check(*self.exchange(data))

    @FUZZ
    @given(st.lists(st.sampled_from([
        b"GET /1/status HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /1/jobs HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET /1/status?x HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
    ]), min_size=1, max_size=6))
    def test_pipelined_mixtures_are_all_answered(self, requests: list[bytes]) -> None:
        heads = [r.startswith(b"HEAD") for r in requests]
        responses, loud, raw = self.exchange(b"".join(requests), heads=heads)
        self.check(responses, loud, raw)
        if b"HTTP/1.0" not in b"".join(requests):
            self.assertEqual(len(responses), len(requests))


# --------------------------------------------------------------------------
# node reports

GOOD_REPORT = {"status": "live-repair", "command": "fix-disk",
               "details": {"disk": "sda", "errors": [1, 2]}}


def _mutations(value: Any) -> st.SearchStrategy[Any]:
    """``value`` with one part replaced by a random JSON value (or removed)."""
    if isinstance(value, dict) and value:
        return st.sampled_from(sorted(value)).flatmap(lambda k: st.one_of(
            JSON_VALUES.map(lambda v: {**value, k: v}),
            st.just({key: v for key, v in value.items() if key != k}),
            _mutations(value[k]).map(lambda v: {**value, k: v}),
        ))
    if isinstance(value, list) and value:
        return st.integers(0, len(value) - 1).flatmap(
            lambda i: JSON_VALUES.map(lambda v: [*value[:i], v, *value[i + 1:]]))
    return JSON_VALUES


#: _decode only needs the class's error type, not a connected client.
_BARE_CLIENT = object.__new__(MondClient)


class NodeReportFuzzTests(SynchronousTestCase):
    def validate(self, document: Any) -> None:
        try:
            report = validate_diagnose("node7", document)
        except MondError as e:
            self.assertIn("node7", str(e))
            self.assertNotIn("\n", str(e))
            return
        # what passes is stored (state.json) and served (/1/status) as strict JSON
        text = json.dumps(dict(report.raw), allow_nan=False, ensure_ascii=False)
        strictjson.loads(text.encode("utf-8"), "stored report")

    @FUZZ
    @given(JSON_VALUES)
    def test_random_documents(self, value: Any) -> None:
        self.validate(value)
        self.validate({"data": value})

    @FUZZ
    @given(_mutations({"name": "diagnose", "data": GOOD_REPORT}))
    def test_mutated_reports(self, document: Any) -> None:
        self.validate(document)

    @FUZZ
    @given(st.binary(max_size=200) | st.sampled_from([
        b'{"data": {"status": "evacuate", "details": NaN}}',
        b'{"data": {"status": "evacuate", "status": "Ok"}}',
        b'{"data": {"status": "evacuate", "details": "\\udc00"}}',
        b"[" * 5000,
    ]))
    def test_random_answers_through_the_client(self, body: bytes) -> None:
        node = Node(name="node7", uuid="u7", group="default", pip="127.0.0.7")
        try:
            document = MondClient._decode(_BARE_CLIENT, node, "http://127.0.0.7:1815/x", 200, body)
        except MondError as e:
            self.assertIn("node7", str(e))
            return
        self.validate(document)


# --------------------------------------------------------------------------
# state file

GOOD_STATE = json.loads(store_mod.encode(sample_state()))


class StateFileFuzzTests(SynchronousTestCase):
    def load(self, data: bytes) -> None:
        try:
            state = store_mod.decode(data, "/var/lib/ganeti-maintd/state.json")
        except StoreError as e:
            self.assertIn("/var/lib/ganeti-maintd/state.json", str(e))
            return
        # a state that loads is written back and reads back the same
        again = store_mod.decode(store_mod.encode(state), "again")
        self.assertEqual(again, state)

    @FUZZ
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data: bytes) -> None:
        self.load(data)

    @FUZZ
    @given(_mutations(GOOD_STATE))
    def test_mutated_documents(self, doc: Any) -> None:
        self.load(json.dumps(doc).encode())

    @FUZZ
    @given(st.integers(0, len(store_mod.encode(sample_state())) - 1), st.integers(0, 255))
    def test_flipped_bytes(self, at: int, byte: int) -> None:
        data = bytearray(store_mod.encode(sample_state()))
        data[at] = byte
        self.load(bytes(data))

    @FUZZ
    @given(st.sampled_from(["incidents", "jobs", "evacuated", "last_round", "harep"]), JSON_VALUES)
    def test_random_values_for_each_field(self, key: str, value: Any) -> None:
        self.load(json.dumps({**GOOD_STATE, key: value}).encode())

    @FUZZ
    @given(st.integers(0, 1), st.sampled_from(sorted(GOOD_STATE["incidents"][0])), JSON_VALUES)
    def test_random_values_for_each_incident_field(self, n: int, key: str, value: Any) -> None:
        incidents = [dict(i) for i in GOOD_STATE["incidents"]]
        incidents[n][key] = value
        self.load(json.dumps({**GOOD_STATE, "incidents": incidents}).encode())


class FuzzDriverTests(SynchronousTestCase):
    """bench/fuzz_http.py: only loopback targets unless told otherwise."""

    def setUp(self) -> None:
        import importlib.util

        path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "fuzz_http.py")
        spec = importlib.util.spec_from_file_location("fuzz_http", path)
        assert spec is not None and spec.loader is not None
        self.mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.mod)

    def test_loopback_only_by_default(self) -> None:
        self.assertEqual(self.mod.target("http://127.0.0.1:1816", False), ("127.0.0.1", 1816))
        self.assertEqual(self.mod.target("http://[::1]:99", False), ("::1", 99))
        for url in ("http://192.0.2.7:1816", "http://[2001:db8::1]:1816"):
            with self.assertRaises(SystemExit) as cm:
                self.mod.target(url, False)
            self.assertEqual(cm.exception.code, 2)
            self.assertEqual(self.mod.target(url, True)[1], 1816)  # resolved, not contacted
        with self.assertRaises(SystemExit):
            self.mod.target("https://127.0.0.1:1816", False)

    def test_answers_are_checked(self) -> None:
        ok = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]'
        self.assertIsNone(self.mod.check(ok + ok, [False, False]))
        self.assertIsNone(self.mod.check(b"HTTP/1.1 100 Continue\r\n\r\n" + ok, [False]))
        self.assertIsNone(self.mod.check(ok[:-2], [True]))
        self.assertIn("HTTP 500", self.mod.check(ok.replace(b"200", b"500"), [False]))
        self.assertIn("HTTP 308", self.mod.check(ok.replace(b"200", b"308"), [False]))
        self.assertIn("not JSON", self.mod.check(ok.replace(b"[]", b"[x"), [False]))
        self.assertIn("content type", self.mod.check(ok.replace(b"json", b"html"), [False]))
