"""The man page (man/ganeti-maintd.rst) builds cleanly and covers every option."""

from __future__ import annotations

import io
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from maintd.daemon.options import Options

MAN = os.path.join(os.path.dirname(__file__), "..", "man", "ganeti-maintd.rst")


class ManPageTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(MAN, encoding="utf-8") as f:
            self.text = f.read()

    def test_builds_without_warnings(self) -> None:
        from docutils.core import publish_string
        from docutils.writers import manpage

        errors = io.StringIO()
        out = publish_string(
            self.text,
            source_path=MAN,
            writer=manpage.Writer(),
            settings_overrides={"halt_level": 2, "report_level": 2, "warning_stream": errors},
        )
        self.assertEqual(errors.getvalue(), "")
        self.assertIn(b".TH \"ganeti-maintd\" \"8\"", out)

    def test_every_option_is_documented(self) -> None:
        documented = set(re.findall(r"\*\*(--[a-z-]+)\*\*", self.text))
        for long, *_ in Options.optParameters + Options.optFlags:
            self.assertIn(f"--{long}", documented)

    def test_every_endpoint_and_exit_code_is_documented(self) -> None:
        for path in ("``/``", "``/1``", "``/1/status``", "``/1/jobs``", "``/1/evacuated``"):
            self.assertIn(path, self.text)
        self.assertRegex(self.text, r"\n11\n  This host is not the master")
