"""``--log-format json``: the shape of one line (maintd.common.jsonlog)."""

from __future__ import annotations

import json

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from maintd.common.jsonlog import format_event


class Thing:
    def __str__(self) -> str:
        return "a thing"


class JsonLineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lines: list[str] = []
        publisher = LogPublisher(lambda event: self.lines.append(format_event(event)))
        self.log = Logger(namespace="maintd.test", observer=publisher)

    def record(self) -> dict[str, object]:
        [line] = self.lines
        self.assertTrue(line.endswith("}\n"))
        self.assertEqual(line.count("\n"), 1, "one object per line")
        return json.loads(line)  # type: ignore[no-any-return]

    def test_flat_object_with_the_event_fields(self) -> None:
        self.log.warn("node {node} unreachable after {took:.1f}s", node="node4", took=2.25,
                      obj=Thing(), data=b"\x00")
        r = self.record()
        self.assertEqual(r["level"], "warn")
        self.assertEqual(r["namespace"], "maintd.test")
        self.assertEqual(r["text"], "node node4 unreachable after 2.2s")
        self.assertEqual(r["format"], "node {node} unreachable after {took:.1f}s")
        self.assertEqual((r["node"], r["took"], r["obj"]), ("node4", 2.25, "a thing"))
        self.assertIsInstance(r["data"], str)
        self.assertRegex(str(r["time"]), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertFalse([k for k in r if k.startswith("log_")])

    def test_reserved_names_are_prefixed(self) -> None:
        self.log.info("{text} at {time}", text="hello", time=3, namespace="x")
        r = self.record()
        self.assertEqual(r["text"], "hello at 3")
        self.assertEqual((r["field_text"], r["field_time"], r["field_namespace"]), ("hello", 3, "x"))
        self.assertEqual(r["namespace"], "maintd.test")
        self.assertEqual(r["level"], "info")

    def test_failure_has_type_message_and_traceback(self) -> None:
        try:
            raise ValueError("bad <node> \n name")
        except ValueError:
            self.log.failure("round {number} crashed", Failure(), number=3)
        r = self.record()
        self.assertEqual(r["level"], "critical")
        self.assertEqual(r["failure"], "ValueError: bad <node> \n name")
        self.assertIn("Traceback", str(r["text"]))
        self.assertEqual(r["number"], 3)

    def test_a_broken_event_still_gives_a_line(self) -> None:
        line = format_event({"log_level": LogLevel.info, "log_format": "{x!r}", "x": float("nan"),
                             "log_time": "not a time"})
        self.assertEqual(json.loads(line)["x"], "nan")
