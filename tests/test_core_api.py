"""The HTTP state API (maintd.daemon.api), in memory through treq's StubTreq."""

from __future__ import annotations

import json
import zlib
from typing import Any

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from maintd.daemon.api import StateAPI
from maintd.daemon.state import Action, Incident, MaintState, RepairStatus

BASE = "http://127.0.0.1:1816"


def incident(n: int) -> Incident:
    return Incident(
        uuid=f"uuid-{n}",
        node=f"node-uuid-{n}",
        node_name=f"node{n}",
        original={"status": "live-repair", "command": "fix-disk", "details": {}},
        action=Action.LIVE_REPAIR,
        status=RepairStatus.PENDING,
        jobs=(40 + n,),
        tag=f"maintd:repairready:uuid-{n}",
        ctime=100.0,
        mtime=101.0,
        serial_no=3,
    )


STATE = MaintState(
    incidents=(incident(1), incident(2)),
    jobs=(41, 42),
    evacuated=("inst1", "inst2"),
    last_round={"number": 9, "result": "ok", "notes": [{"would": "migrate inst1"}]},
)


class APITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = StateAPI(STATE)
        self.http = StubTreq(self.api.resource())

    def request(self, method: str, path: str) -> tuple[int, Any, bytes]:
        response = self.successResultOf(self.http.request(method, BASE + path))
        body = self.successResultOf(response.content())
        return response.code, response.headers, body

    def get(self, path: str) -> Any:
        code, headers, body = self.request("GET", path)
        self.assertEqual(code, 200, (path, body))
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"], path)
        return json.loads(body)

    def test_root_lists_protocol_versions(self) -> None:
        self.assertEqual(self.get("/"), [1])

    def test_version_one_is_null(self) -> None:
        self.assertIsNone(self.get("/1"))

    def test_status_lists_incidents_as_documented(self) -> None:
        status = self.get("/1/status")
        self.assertEqual([i["uuid"] for i in status], ["uuid-1", "uuid-2"])
        first = status[0]
        for key in (
            "uuid",
            "node",
            "original",
            "repair-status",
            "jobs",
            "tag",
            "action",
            "ctime",
            "mtime",
            "serial_no",
        ):
            self.assertIn(key, first)
        self.assertEqual(first["repair-status"], "pending")
        self.assertEqual(first["jobs"], [41])
        self.assertEqual(first["node"], "node-uuid-1")
        self.assertEqual(first["original"]["command"], "fix-disk")

    def test_jobs_and_evacuated(self) -> None:
        self.assertEqual(self.get("/1/jobs"), [41, 42])
        self.assertEqual(self.get("/1/evacuated"), ["inst1", "inst2"])

    def test_last_round(self) -> None:
        self.assertEqual(self.get("/1/last-round")["notes"], [{"would": "migrate inst1"}])

    def test_trailing_slash_is_the_same_resource(self) -> None:
        for path in ("/1", "/1/status", "/1/jobs", "/1/evacuated", "/1/last-round"):
            self.assertEqual(self.get(path + "/"), self.get(path), path)

    def test_head_works_like_get(self) -> None:
        code, headers, body = self.request("HEAD", "/1/status")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])

    def test_unknown_path_is_404_json(self) -> None:
        for path in ("/2", "/1/statuses", "/1/status/uuid-1/jobs", "/favicon.ico", "/1//status"):
            code, headers, body = self.request("GET", path)
            self.assertEqual(code, 404, path)
            self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
            self.assertEqual(json.loads(body)["error"], "not found")

    def test_other_methods_are_405_json(self) -> None:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            code, headers, body = self.request(method, "/1/status")
            self.assertEqual(code, 405, method)
            self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
            self.assertEqual(json.loads(body)["method"], method)
            self.assertIn("GET", headers.getRawHeaders("allow")[0])

    def test_update_shows_the_new_state(self) -> None:
        self.api.update(STATE.without_incident("uuid-1"))
        self.assertEqual([i["uuid"] for i in self.get("/1/status")], ["uuid-2"])

    def test_bodies_are_encoded_once_per_change(self) -> None:
        body = self.api.body("status")
        # another round summary only: the incident list is not re-encoded
        self.api.update(
            MaintState(
                incidents=STATE.incidents,
                jobs=STATE.jobs,
                evacuated=STATE.evacuated,
                last_round={"number": 10},
            )
        )
        self.assertIs(self.api.body("status"), body)
        self.assertEqual(self.get("/1/last-round"), {"number": 10})

    def raw_get(self, path: str, accept: str) -> tuple[Any, bytes]:
        """GET without treq's transparent gzip decoding."""
        agent = RequestTraversalAgent(self.api.resource())
        d = agent.request(b"GET", (BASE + path).encode(), Headers({"Accept-Encoding": [accept]}))
        agent.flush()
        response = self.successResultOf(d)
        body = readBody(response)
        agent.flush()
        return response.headers, self.successResultOf(body)

    def test_gzip_for_clients_that_accept_it(self) -> None:
        big = MaintState(incidents=tuple(incident(n) for n in range(50)))
        self.api.update(big)
        plain = self.get("/1/status")
        self.assertEqual(len(plain), 50)
        for accept in ("gzip", "deflate, gzip;q=1.0", "x-gzip"):
            headers, raw = self.raw_get("/1/status", accept)
            self.assertEqual(headers.getRawHeaders("content-encoding"), ["gzip"], accept)
            self.assertEqual(json.loads(zlib.decompress(raw, 31)), plain)
        for accept in ("identity", "gzip;q=0", "br"):
            headers, raw = self.raw_get("/1/status", accept)
            self.assertIsNone(headers.getRawHeaders("content-encoding"), accept)
            self.assertEqual(json.loads(raw), plain)

    def test_small_bodies_are_never_compressed(self) -> None:
        headers, raw = self.raw_get("/1/jobs", "gzip")
        self.assertIsNone(headers.getRawHeaders("content-encoding"))
        self.assertEqual(json.loads(raw), [41, 42])

    def test_klein_routes_answer_the_same(self) -> None:
        # the fast path and the Klein app serve identical bodies
        klein = StubTreq(self.api.app.resource())
        for path in ("/", "/1", "/1/status", "/1/jobs/", "/1/evacuated", "/1/last-round"):
            response = self.successResultOf(klein.get(BASE + path))
            self.assertEqual(response.code, 200, path)
            self.assertEqual(
                json.loads(self.successResultOf(response.content())), self.get(path), path
            )

    def test_empty_state(self) -> None:
        self.http = StubTreq(StateAPI().resource())
        self.assertEqual(self.get("/1/status"), [])
        self.assertEqual(self.get("/1/jobs"), [])
        self.assertEqual(self.get("/1/evacuated"), [])
        self.assertEqual(self.get("/1/last-round"), {})


def parse_responses(raw: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split a byte stream of HTTP/1.1 responses (Content-Length framed)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        code = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers[b"content-length"])
        out.append((code, headers, rest[:length]))
        raw = rest[length:]
    return out


class ChannelTests(SynchronousTestCase):
    """The daemon's HTTP channel answers like twisted.web, whichever path a
    request takes (the pre-built shortcut or the full request machinery)."""

    def setUp(self) -> None:
        self.api = StateAPI(STATE)

    def exchange(self, *chunks: bytes, debug: bool = False) -> list[Any]:
        site = self.api.site(debug=debug)
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        for chunk in chunks:
            proto.dataReceived(chunk)
        self.addCleanup(proto.connectionLost, None)
        return parse_responses(transport.value())

    def test_shortcut_and_full_path_agree(self) -> None:
        get = b"GET /1/status HTTP/1.1\r\nHost: x\r\n\r\n"
        fast = self.exchange(get)
        split = self.exchange(get[:10], get[10:])  # not one whole request: full path
        debug = self.exchange(get, debug=True)  # -d: no shortcut, requests logged
        # both paths really were taken (only twisted.web adds a Server header)
        self.assertNotIn(b"server", fast[0][1])
        self.assertIn(b"server", split[0][1])
        for responses in (fast, split, debug):
            (code, headers, body) = responses[0]
            self.assertEqual(code, 200)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertIn(b"date", headers)
            self.assertEqual(json.loads(body), [i.to_json() for i in STATE.incidents])

    def test_keep_alive_then_more_requests(self) -> None:
        got = self.exchange(
            b"GET /1/jobs HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /1/evacuated/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
            b"DELETE /1/jobs HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        self.assertEqual(
            [(c, json.loads(b)) for c, _, b in got[:2]],
            [(200, [41, 42]), (200, ["inst1", "inst2"])],
        )
        self.assertEqual([c for c, _, _ in got[2:]], [404, 405])

    def test_pipelined_requests_are_all_answered(self) -> None:
        two = b"GET /1/jobs HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
        got = self.exchange(two)
        self.assertEqual([json.loads(b) for _, _, b in got], [[41, 42], [1]])

    def test_gzip_on_the_shortcut(self) -> None:
        self.api.update(MaintState(incidents=tuple(incident(n) for n in range(50))))
        ((code, headers, body),) = self.exchange(
            b"GET /1/status HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"
        )
        self.assertEqual(headers[b"content-encoding"], b"gzip")
        self.assertEqual(len(json.loads(zlib.decompress(body, 31))), 50)


class LogCapture:
    """Every log event published while the test runs."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


class HostileRequestTests(SynchronousTestCase):
    """Requests an attacker or a broken client sends: one JSON answer, and
    nothing in the log (a log line per request is a way to fill the disk)."""

    setUp = ChannelTests.setUp
    exchange = ChannelTests.exchange

    def test_path_that_is_not_utf8_is_400_without_a_traceback(self) -> None:
        logs = LogCapture(self)
        for path in (b"/%ff", b"/1/%c3%28", b"/%80/status"):
            ((code, headers, body),) = self.exchange(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(code, 400, path)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertEqual(json.loads(body)["error"], "bad request")
        self.assertEqual(logs.texts(), [])
        self.assertFalse([e for e in logs.events if "log_failure" in e])

    def test_head_off_the_shortcut_has_no_body_and_logs_nothing(self) -> None:
        logs = LogCapture(self)
        ((_, _, get_body),) = self.exchange(b"GET /1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        long_query = b"x" * 15000
        for request in (
            b"HEAD /1/status?" + long_query + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD /1/status HTTP/1.0\r\n\r\n",
            b"HEAD /1/status HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            site = self.api.site()
            proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            transport = StringTransport()
            proto.makeConnection(transport)
            proto.dataReceived(request)
            self.addCleanup(proto.connectionLost, None)
            head, _, rest = transport.value().partition(b"\r\n\r\n")
            self.assertIn(b" 200 ", head.split(b"\r\n")[0], request[:40])
            self.assertIn(b"Content-Length: %d" % len(get_body), head)
            self.assertEqual(rest, b"", request[:40])
        self.assertEqual(logs.texts(), [])
