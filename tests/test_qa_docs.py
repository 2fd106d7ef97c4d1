"""The admin tools are documented in the man page and the README (QA bug E)."""

from __future__ import annotations

import configparser
import os
import re

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.join(os.path.dirname(__file__), "..")


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


#: The daemons' own commands (maintd.admin.launcher), not admin tools.
DAEMONS = ("ganeti-maintd", "ganeti-maintd-agent")


def all_console_scripts() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return sorted(line.split("=")[0].strip() for line in lines)


def console_scripts() -> list[str]:
    """The admin tools."""
    return [s for s in all_console_scripts() if s not in DAEMONS]


def section(text: str, title: str, underline: str) -> str:
    """The body of the section ``title`` (up to the next one of its level)."""
    pattern = rf"\n{re.escape(title)}\n{underline}+\n(.*?)(?=\n[^\n]+\n{underline}+\n|\Z)"
    m = re.search(pattern, text, re.S)
    assert m is not None, f"no section {title!r}"
    return m.group(1)


class AdminToolDocsTests(SynchronousTestCase):
    def test_the_tools_exist(self) -> None:
        self.assertEqual(console_scripts(),
                         ["ganeti-maintd-ctl", "ganeti-maintd-plan", "ganeti-maintd-snapshot"])
        self.assertLessEqual(set(DAEMONS), set(all_console_scripts()))

    def test_man_page_administration_section(self) -> None:
        admin = section(read("man/ganeti-maintd.rst"), "ADMINISTRATION", "=")
        for tool in console_scripts():
            self.assertIn(f"**{tool}**", admin)
        for word in ("list", "cancel", "forget"):
            self.assertRegex(admin, rf"\*\*{word}\*\*")
        for option in ("--json", "--socket", "--state-dir", "--text-data", "--output"):
            self.assertIn(f"**{option}**", admin)
        see_also = section(read("man/ganeti-maintd.rst"), "SEE ALSO", "=")
        for tool in console_scripts():
            self.assertIn(tool, see_also)

    def test_readme_admin_tools_section(self) -> None:
        readme = read("README.md")
        m = re.search(r"\n## Admin tools\n(.*?)(?=\n## |\Z)", readme, re.S)
        assert m is not None, "no '## Admin tools' section"
        for tool in console_scripts():
            self.assertRegex(m.group(1), rf"(?m)^{tool} ")
        for text in ("list", "--json", "cancel UUID", "forget UUID", "--socket", "--state-dir"):
            self.assertIn(text, m.group(1))

    def test_readme_still_opens_with_its_two_commands(self) -> None:
        self.assertTrue(read("README.md").startswith(
            "# ganeti-maintd\n\n```sh\n"
            "make demo    # set up a virtualenv and run the daemon on the built-in simulated"
            " cluster\n"
            "make test    # set up a virtualenv and run lint, type checks and the whole test"
            " suite\n```\n"
        ))

    def test_status_fields_of_the_tag_job_are_documented(self) -> None:
        status = read("man/ganeti-maintd.rst")
        self.assertIn("``tag-job``", status)
        self.assertIn("``tag-set``", status)
        self.assertIn("`tag-job`", read("README.md"))
