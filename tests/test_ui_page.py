"""The status page (maintd.daemon.ui) and the /ui and /metrics routes of the API."""

from __future__ import annotations

import html.parser
import json
import zlib
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from maintd.cluster.model import Cluster, Instance, Node
from maintd.daemon.api import StateAPI
from maintd.daemon.mastership import Mastership
from maintd.daemon.metrics import DaemonMetrics
from maintd.daemon.state import Action, Incident, MaintState, RepairStatus
from maintd.daemon.ui import MAX_ROWS, StatusPage, page_model, progress, refresh_seconds
from maintd.decide import guardrails

BASE = "http://127.0.0.1:1816"
EVIL = '<b id="pwn">bold</b><script>alert(1)</script> & "quoted"'


def node(name: str, group: str = "g") -> Node:
    return Node(name=name, uuid=f"{name}-uuid", group=group)


def inst(name: str, primary: str, secondary: str | None = None) -> Instance:
    return Instance(name=name, uuid=f"{name}-uuid", primary=primary,
                    secondaries=(secondary,) if secondary else (), disk_template="drbd")


CLUSTER = Cluster(
    name="c.example.com", master="n1",
    nodes={n: node(n) for n in ("n1", "n2", "n3", "n4")},
    instances={
        "i1": inst("i1", "n4", "n2"),
        "i2": inst("i2", "n4", "n3"),
        "i3": inst("i3", "n1", "n4"),
        "i4": inst("i4", "n2", "n3"),
    },
)


def evacuation(status: RepairStatus = RepairStatus.PENDING, **kw: Any) -> Incident:
    fields: dict[str, Any] = dict(
        uuid="u-4", node="n4-uuid", node_name="n4",
        original={"status": "evacuate", "command": "", "details": EVIL},
        action=Action.EVACUATE, status=status, jobs=(7, 8, 9), ctime=100.0, mtime=200.0,
    )
    fields.update(kw)
    return Incident(**fields)


class Parsed(html.parser.HTMLParser):
    """Elements (tag, attrs) and text of an HTML document."""

    def __init__(self, data: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements
                if t == tag and all(a.get(k) == v for k, v in attrs.items())]


class ProgressTests(SynchronousTestCase):
    def test_jobs_done_and_instances_left_on_the_node(self) -> None:
        p = progress(evacuation(), awaited=[9], cluster=CLUSTER)
        self.assertEqual((p.jobs_done, p.jobs_running), (2, 1))
        # i1, i2 (DRBD) have n4 as primary: to the secondary, then a new
        # secondary, two moves each; i3 has it as secondary: one move
        self.assertEqual((p.primaries_left, p.secondaries_left, p.moves_left), (2, 1, 5))
        self.assertEqual(p.text(), "2 jobs done, 1 running, 5 moves left "
                                   "(2 primary, 1 secondary instances on the node)")
        shared = Cluster(name="c", master="n1", nodes=CLUSTER.nodes, instances={
            "s1": Instance(name="s1", uuid="s1-u", primary="n4", disk_template="sharedfile")})
        self.assertEqual(progress(evacuation(), [], shared).moves_left, 1)

    def test_without_snapshot_or_when_finished_only_jobs(self) -> None:
        self.assertIsNone(progress(evacuation(), [], None).moves_left)
        done = progress(evacuation(RepairStatus.COMPLETED), [], CLUSTER)
        self.assertIsNone(done.moves_left)
        self.assertEqual(done.text(), "3 jobs done")
        live = progress(evacuation(action=Action.LIVE_REPAIR, jobs=()), [], CLUSTER)
        self.assertEqual(live.text(), "0 jobs done")


class PageTests(SynchronousTestCase):
    def render(self, state: MaintState, **kw: Any) -> tuple[str, Parsed]:
        page = StatusPage(lambda: state, clock=lambda: 1000.0, **kw)
        data = self.successResultOf(page.render()).decode("utf-8")
        return data, Parsed(data)

    def test_node_supplied_html_shows_as_text(self) -> None:
        state = MaintState(incidents=(evacuation(reason=EVIL, node_name='n4<i id="x">'),))
        data, doc = self.render(state)
        self.assertFalse(doc.find("b", id="pwn"))
        self.assertFalse(doc.find("script"))
        self.assertFalse(doc.find("i", id="x"))
        self.assertIn(EVIL, "".join(doc.text))
        self.assertIn("&lt;script&gt;", data)

    def test_shows_incident_fields_progress_and_lists(self) -> None:
        state = MaintState(
            incidents=(evacuation(), evacuation(RepairStatus.FAILED, uuid="u-3", node_name="n3",
                                                reason="job 5 error: disk gone")),
            jobs=(9,), evacuated=("inst-a", "inst-b"),
            last_round={"number": 41, "result": "ok", "end": 990.0},
        )
        ov = guardrails.overview(state, now=1000.0, max_evacuating=2, next_round=1030.0)
        data, doc = self.render(state, cluster=lambda: CLUSTER,
                                mastership=Mastership(hostname="h", verified=True),
                                overview=lambda: ov)
        (row,) = doc.find("tr", id="incident-u-4")
        self.assertEqual((row["data-status"], row["data-node"]), ("pending", "n4"))
        text = " ".join(doc.text)
        for expected in ("evacuate", "2 jobs done, 1 running, 5 moves left", "job 5 error: disk gone",
                         "#41 ok", "(10 s ago)", "(in 30 s)", "inst-a", "inst-b",
                         "Nodes under evacuation", "1 of at most 2", "Storm breaker",
                         "closed (0 nodes reporting, threshold", "not paused",
                         "c.example.com"):
            self.assertIn(expected, text)
        # active incidents first
        rows = [a["id"] for t, a in doc.elements if t == "tr" and a.get("id")]
        self.assertEqual(rows, ["incident-u-4", "incident-u-3"])

    def test_refreshes_itself_reads_on_a_phone_and_loads_nothing(self) -> None:
        data, doc = self.render(MaintState(), refresh=7)
        self.assertEqual(doc.find("meta", **{"http-equiv": "refresh"})[0]["content"], "7")
        self.assertIn("width=device-width", doc.find("meta", name="viewport")[0]["content"] or "")
        self.assertIn("@media (max-width", data)
        for _tag, attrs in doc.elements:
            self.assertFalse({"src", "href"} & set(attrs), (_tag, attrs))
        self.assertFalse(doc.find("script") or doc.find("link"))
        self.assertIn("No incidents.", " ".join(doc.text))

    def test_many_incidents_active_first_and_bounded(self) -> None:
        done = tuple(evacuation(RepairStatus.COMPLETED, uuid=f"d{n}", node_name=f"d{n}",
                                mtime=float(n)) for n in range(MAX_ROWS + 50))
        active = evacuation(uuid="active", mtime=1.0)
        _, doc = self.render(MaintState(incidents=(*done, active)))
        rows = [a["id"] for t, a in doc.elements if t == "tr" and a.get("id")]
        self.assertEqual(len(rows), MAX_ROWS)
        self.assertEqual(rows[0], "incident-active")
        self.assertEqual(rows[1], f"incident-d{MAX_ROWS + 49}")  # newest finalized next
        text = " ".join(doc.text)
        self.assertIn(f"Incidents ({MAX_ROWS + 51})", text)
        self.assertIn("51 older finalized incidents not shown", text)

    def test_rendered_once_a_second_per_state(self) -> None:
        now = [1000.0]
        state = [MaintState()]
        page = StatusPage(lambda: state[0], clock=lambda: now[0])
        first = self.successResultOf(page.render())
        self.assertIs(self.successResultOf(page.render()), first)
        state[0] = MaintState(incidents=(evacuation(),))
        second = self.successResultOf(page.render())
        self.assertIn(b"incident-u-4", second)
        now[0] += 1
        self.assertIsNot(self.successResultOf(page.render()), second)

    def test_tripped_breaker_pause_and_full_budget(self) -> None:
        guard = guardrails.paused({"breaker": {"tripped": True, "reporting": 9, "threshold": 4}},
                                  reason="<i>maintenance</i>", duration=None, now=0.0)
        state = MaintState(incidents=(evacuation(),), guard=guard)
        ov = guardrails.overview(state, now=1000.0, max_evacuating=1)
        facts = {f.label: (f.value, f.tone) for f in
                 page_model(state, now=1000.0, refresh=5, overview=ov).facts}
        self.assertEqual(facts["Nodes under evacuation"], ("1 of at most 1", "warn"))
        self.assertEqual(facts["Storm breaker"],
                         ("TRIPPED: 9 nodes reporting, threshold 4", "bad"))
        self.assertEqual(facts["Pause"], ("paused: <i>maintenance</i> (ganeti-maintd-ctl), "
                                          "until resumed", "warn"))
        _, doc = self.render(state, overview=lambda: ov)
        self.assertFalse(doc.find("i"))

    def test_refresh_follows_the_round_delay(self) -> None:
        self.assertEqual([refresh_seconds(d) for d in (0.1, 5, 300)], [2, 5, 15])

    def test_round_running_and_lost_mastership(self) -> None:
        ms = Mastership(hostname="h", verified=True)
        ms.mark_lost(None)
        model = page_model(MaintState(), now=0.0, refresh=5, round_running=True, mastership=ms)
        facts = {f.label: (f.value, f.tone) for f in model.facts}
        self.assertEqual(facts["Next round"][0], "a round is running now")
        self.assertEqual(facts["Master"], ("no: not submitting jobs", "bad"))
        self.assertEqual(facts["Last round"][0], "none yet")


class RouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = MaintState(incidents=(evacuation(),), jobs=(9,))
        self.api = StateAPI(self.state, metrics=DaemonMetrics(lambda: self.state),
                            page=StatusPage(lambda: self.state))
        self.http = StubTreq(self.api.resource())

    def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any, bytes]:
        response = self.successResultOf(self.http.request(method, BASE + path, **kw))
        return response.code, response.headers, self.successResultOf(response.content())

    def test_ui_is_html_with_a_strict_policy(self) -> None:
        for path in ("/ui", "/ui/"):
            code, headers, body = self.request("GET", path)
            self.assertEqual(code, 200)
            self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
            policy = headers.getRawHeaders("content-security-policy")[0]
            self.assertIn("default-src 'none'", policy)
            self.assertNotIn("script-src", policy)
            self.assertIn(b"incident-u-4", body)

    def test_metrics_in_prometheus_text_format(self) -> None:
        code, headers, body = self.request("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders("content-type")[0].startswith("text/plain; version="))
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        self.assertIn("ganeti_maintd_incidents", names)
        self.assertIn("ganeti_maintd_awaited_jobs", names)

    def test_read_only_other_methods_are_405_json(self) -> None:
        for path in ("/metrics", "/ui"):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                code, headers, body = self.request(method, path, data=b"x")
                self.assertEqual(code, 405, (method, path))
                self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
                self.assertEqual(json.loads(body)["error"], "method not allowed")
                self.assertEqual(headers.getRawHeaders("allow"), ["GET, HEAD"])

    def test_head_has_no_body(self) -> None:
        code, headers, body = self.request("HEAD", "/ui")
        self.assertEqual((code, body), (200, b""))

    def test_odd_paths_are_404_json(self) -> None:
        for path in ("/ui/x", "/metrics/..", "/uix", "/metricsz", "/%00", "/ui/%2e%2e/1/status"):
            code, headers, body = self.request("GET", path)
            self.assertEqual(code, 404, path)
            self.assertEqual(json.loads(body)["error"], "not found")

    def test_without_metrics_or_page_they_are_404(self) -> None:
        http = StubTreq(StateAPI(self.state).resource())
        for path in ("/metrics", "/ui"):
            response = self.successResultOf(http.get(BASE + path))
            self.assertEqual(response.code, 404)

    def test_large_metrics_are_gzipped_when_asked(self) -> None:
        for n in range(100):
            self.api.metrics.report("mond", f"node{n}.example.com", "ok")  # type: ignore[union-attr]
        # without treq's transparent decoding
        agent = RequestTraversalAgent(self.api.resource())
        d = agent.request(b"GET", (BASE + "/metrics").encode(),
                          Headers({"Accept-Encoding": ["gzip"]}))
        agent.flush()
        response = self.successResultOf(d)
        body = readBody(response)
        agent.flush()
        self.assertEqual(response.headers.getRawHeaders("content-encoding"), ["gzip"])
        text = zlib.decompress(self.successResultOf(body), 31).decode()
        self.assertIn('node="node99.example.com"', text)

    def test_a_failing_part_is_one_log_line_not_a_traceback(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def broken() -> Any:
            raise RuntimeError("overview exploded")

        self.api.page.overview = broken  # type: ignore[union-attr]
        self.api.metrics.overview = broken  # type: ignore[union-attr]
        code, headers, body = self.request("GET", "/ui")
        self.assertEqual((code, json.loads(body)), (500, {"error": "status page failed"}))
        code, _, body = self.request("GET", "/metrics")
        self.assertEqual(code, 200)  # everything but the guardrails
        self.assertIn(b"ganeti_maintd_incidents{", body)
        self.assertNotIn(b"ganeti_maintd_paused", body)
        errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 2, errors)
        self.assertTrue(all("overview exploded" in e for e in errors), errors)
        self.assertFalse([e for e in events if e.get("log_failure")])

    def test_status_fast_path_is_unchanged(self) -> None:
        code, headers, body = self.request("GET", "/1/status")
        self.assertEqual(code, 200)
        self.assertEqual([i["uuid"] for i in json.loads(body)], ["u-4"])


class LongLineTests(SynchronousTestCase):
    """Over-long request and header lines get an answer, with and without -d."""

    def exchange(self, data: bytes, debug: bool) -> tuple[bytes, bool]:
        site = StateAPI(MaintState()).site(debug=debug)
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(data)
        self.addCleanup(proto.connectionLost, None)
        return transport.value(), transport.disconnecting

    def test_long_header_is_431_and_long_request_line_414(self) -> None:
        cases = {
            b"GET /ui HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 20_000 + b"\r\n\r\n": 431,
            b"GET /metrics?" + b"x" * 20_000 + b" HTTP/1.1\r\n\r\n": 414,
        }
        for data, code in cases.items():
            for debug in (False, True):
                answer, closing = self.exchange(data, debug)
                self.assertTrue(answer.startswith(b"HTTP/1.1 %d " % code), (debug, answer[:80]))
                head, _, body = answer.partition(b"\r\n\r\n")
                self.assertIn(b"Content-Type: application/json", head)
                self.assertIn("too long", json.loads(body)["error"])
                self.assertTrue(closing)
