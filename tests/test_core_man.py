"""The man page (man/ganeti-maintd.rst) builds cleanly and covers every option."""

from __future__ import annotations

import io
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from maintd.daemon.options import Options

MAN = os.path.join(os.path.dirname(__file__), "..", "man", "ganeti-maintd.rst")


def build(text: str, path: str) -> tuple[str, bytes]:
    """(warnings, man page) of rst ``text`` through docutils' man page writer."""
    from docutils.core import publish_string
    from docutils.writers import manpage

    errors = io.StringIO()
    out = publish_string(
        text, source_path=path, writer=manpage.Writer(),
        settings_overrides={"halt_level": 2, "report_level": 2, "warning_stream": errors},
    )
    return errors.getvalue(), out


class ManPageTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(MAN, encoding="utf-8") as f:
            self.text = f.read()

    def test_builds_without_warnings(self) -> None:
        errors, out = build(self.text, MAN)
        self.assertEqual(errors, "")
        self.assertIn(b".TH \"ganeti-maintd\" \"8\"", out)

    def test_every_option_is_documented(self) -> None:
        documented = set(re.findall(r"\*\*(--[a-z-]+)\*\*", self.text))
        for long, *_ in Options.optParameters + Options.optFlags:
            self.assertIn(f"--{long}", documented)

    def test_every_endpoint_and_exit_code_is_documented(self) -> None:
        for path in ("``/``", "``/1``", "``/1/status``", "``/1/jobs``", "``/1/evacuated``"):
            self.assertIn(path, self.text)
        self.assertRegex(self.text, r"\n11\n  This host is not the master")


AGENT_MAN = os.path.join(os.path.dirname(__file__), "..", "man", "ganeti-maintd-agent.rst")


class AgentManPageTests(SynchronousTestCase):
    """man/ganeti-maintd-agent.rst builds and covers every agent option and endpoint."""

    def setUp(self) -> None:
        with open(AGENT_MAN, encoding="utf-8") as f:
            self.text = f.read()

    def test_builds_without_warnings(self) -> None:
        errors, out = build(self.text, AGENT_MAN)
        self.assertEqual(errors, "")
        self.assertIn(b".TH \"ganeti-maintd-agent\" \"8\"", out)

    def test_every_option_and_endpoint_is_documented(self) -> None:
        from maintd.agent.tap import Options as AgentOptions

        documented = set(re.findall(r"\*\*(--[a-z-]+)\*\*", self.text))
        for long, *_ in AgentOptions.optParameters + AgentOptions.optFlags:
            self.assertIn(f"--{long}", documented)
        for path in ("/1/report/node/diagnose", "/1/list/collectors", "POST /1/repair"):
            self.assertIn(path, self.text)
