"""hbal text format: parse, format, round-trip, and hbal reading our output."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from maintd.decide.balance.text import TextFormatError, format_text, parse_text
from tests.tools import find_tool

DATA = os.path.join(os.path.dirname(__file__), "data", "htools")
# Files hbal loads that our name-keyed model cannot represent (duplicate
# instance names) or that are invalid on purpose.
SKIP = {"hroller-full.data", "multiple-tags.data", "invalid-node.data"}


def data_files() -> list[str]:
    return sorted(
        f for f in glob.glob(os.path.join(DATA, "*.data")) if os.path.basename(f) not in SKIP
    )


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def hbal_initial_score(hbal: str, path: str) -> str | None:
    out = subprocess.run(
        [hbal, "-t", path], capture_output=True, text=True, timeout=120, check=False
    ).stdout
    m = re.search(r"Initial score: (\S+)", out)
    return m.group(1) if m else None


class ParseTests(SynchronousTestCase):
    def test_sections(self) -> None:
        text = (
            "g1|uuid-g1|preferred|gtag|\n\n"
            "n1|1024|128|800|10240|5120|4|M|uuid-g1|2|a,b|N|0|1|1.5\n"
            "n2|1024|128|800|10240|5120|4|Y|uuid-g1\n"
            "n3|?|?|?|?|?|?|N|uuid-g1\n\n"
            "i1|256|2048|2|running|Y|n1|n2|drbd|t1|1|-|N\n"
            "i2|128|0|1|ADMIN_down|N|n2||diskless|\n\n"
            "htools:iextags:svc\n\n"
            "|128,1,1024,1,1,1|128,1,1024,1,1,1;32768,8,1048576,16,8,12|drbd,plain|3.5|16.0\n"
        )
        c = parse_text(text)
        self.assertEqual(c.master, "n1")
        self.assertEqual(c.nodes["n1"].group, "g1")
        self.assertEqual(c.nodes["n1"].cpu_speed, 1.5)
        self.assertEqual(c.nodes["n1"].tags, frozenset({"a", "b"}))
        self.assertTrue(c.nodes["n2"].offline)
        self.assertTrue(c.nodes["n3"].offline)
        self.assertEqual(c.nodes["n3"].mtotal, 0)
        self.assertEqual(c.nodes["n1"].primaries, ("i1",))
        self.assertEqual(c.nodes["n2"].secondaries, ("i1",))
        self.assertEqual(c.instances["i1"].secondaries, ("n2",))
        self.assertEqual(c.instances["i2"].admin_state, "down")
        self.assertFalse(c.instances["i2"].auto_balance)
        self.assertEqual(c.tags, frozenset({"htools:iextags:svc"}))
        self.assertEqual(c.ipolicy["vcpu-ratio"], 3.5)
        self.assertEqual(c.ipolicy["disk-templates"], ["drbd", "plain"])
        self.assertEqual(c.groups["g1"].nodes, ("n1", "n2", "n3"))

    def test_errors_name_the_object(self) -> None:
        base = "g|u|preferred|\n\nn1|1|0|1|1|1|1|N|u\n\n{}\n\n"
        cases = {
            "i|1|1|1|running|Y|nX||plain|": "nX",
            "i|x|1|1|running|Y|n1||plain|": "instance i",
            "i|1|1|1|sleeping|Y|n1||plain|": "sleeping",
            "i|1|1|1|running|Y|n1||floppy|": "floppy",
            "i|1|1|1|running|Y|n1|n1|drbd|": "same primary",
        }
        for line, needle in cases.items():
            with self.assertRaises(TextFormatError) as cm:
                parse_text(base.format(line))
            self.assertIn(needle, str(cm.exception))
        with self.assertRaises(TextFormatError):
            parse_text("only one section\n")
        with self.assertRaises(TextFormatError) as cm:
            parse_text("g|u|preferred|\n\nn1|1|0|1|1|1|1|N|other\n\n\n\n")
        self.assertIn("n1", str(cm.exception))

    def test_round_trip_on_ganeti_test_data(self) -> None:
        files = data_files()
        self.assertGreater(len(files), 30)
        for path in files:
            c = parse_text(read(path))
            text = format_text(c)
            again = parse_text(text)
            self.assertEqual(again.nodes.keys(), c.nodes.keys(), path)
            self.assertEqual(again.instances, c.instances, path)
            self.assertEqual(format_text(again), text, path)


class HbalReadsOurOutput(SynchronousTestCase):
    def test_same_initial_score(self) -> None:
        hbal = find_tool("hbal")
        checked = 0
        with tempfile.TemporaryDirectory() as tmp:
            for path in data_files():
                ours = os.path.join(tmp, os.path.basename(path))
                with open(ours, "w") as f:
                    f.write(format_text(parse_text(read(path))))
                want = hbal_initial_score(hbal, path)
                got = hbal_initial_score(hbal, ours)
                self.assertEqual(got, want, path)
                checked += want is not None
        self.assertGreater(checked, 20)
