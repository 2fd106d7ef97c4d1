"""ganeti-maintd-plan: text and JSON output, save file, errors, -m against the simulator."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from maintd.admin.plan import PlanError, run
from maintd.decide.balance.text import parse_text
from tests.test_balance_text import DATA

EVAC = os.path.join(DATA, "hbal-evac.data")


def plan_out(*argv: str) -> str:
    out = io.StringIO()
    run(list(argv), out)
    return out.getvalue()


class CliTests(SynchronousTestCase):
    def test_text_output_like_hbal(self) -> None:
        out = plan_out("-t", EVAC, "-C")
        self.assertIn("Initial score: 46.94539253", out)
        self.assertRegex(out, r"Cluster score improved from 46\.94539253 to 0\.26606742")
        lines = re.findall(r"^\s+\d+\. \S+ .* a=.*$", out, re.M)
        self.assertEqual(len(lines), 4)
        self.assertIn("gnt-instance ", out)
        self.assertLess(out.index("Initial score"), out.index(lines[0]))

    def test_json(self) -> None:
        doc = json.loads(plan_out("-t", EVAC, "--json"))
        self.assertEqual(round(doc["initial_score"], 8), 46.94539253)
        self.assertEqual(round(doc["final_score"], 8), 0.26606742)
        self.assertEqual(len(doc["moves"]), 4)
        # One CPU time per step (the last found nothing), and the kernel's load time.
        self.assertEqual(len(doc["step_seconds"]), 5)
        self.assertGreaterEqual(doc["kernel_seconds"], 0.0)
        for mv in doc["moves"]:
            self.assertEqual(set(mv) >= {"instance", "from", "to", "kind"}, True)
        flat = [m["instance"] for js in doc["jobsets"] for m in js]
        self.assertEqual(flat, [m["instance"] for m in doc["moves"]])
        for js in doc["jobsets"]:
            nodes = [
                {m["new_primary"], m["new_secondary"], m["from"], m["from_secondary"]} - {None}
                for m in js
            ]
            for a in range(len(nodes)):
                for b in range(a + 1, len(nodes)):
                    self.assertFalse(nodes[a] & nodes[b])

    def test_options(self) -> None:
        one = json.loads(plan_out("-t", EVAC, "--json", "-l", "1"))
        self.assertEqual(len(one["moves"]), 1)
        nodisk = json.loads(plan_out("-t", EVAC, "--json", "--no-disk-moves"))
        self.assertTrue(all(m["kind"] == "failover" for m in nodisk["moves"]))

    def test_save_round_trip(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "final.data")
            doc = json.loads(plan_out("-t", EVAC, "--json", "-S", path))
            with open(path) as f:
                again = json.loads(plan_out("-t", path, "--json", "-l", "0"))
            self.assertAlmostEqual(again["initial_score"], doc["final_score"], 9)
            self.assertTrue(parse_text(open(path).read()).instances)
            f.close()

    def test_groups(self) -> None:
        multi = os.path.join(DATA, "hspace-groups-two.data")
        with self.assertRaises(PlanError) as cm:
            plan_out("-t", multi)
        self.assertIn("-G", str(cm.exception))
        with self.assertRaises(PlanError) as cm:
            plan_out("-t", multi, "-G", "nope")
        self.assertIn("nope", str(cm.exception))
        self.assertIn("Selected node group: group-01", plan_out("-t", multi, "-G", "group-01"))

    def test_bad_inputs(self) -> None:
        with self.assertRaises(PlanError) as cm:
            plan_out("-t", "/nonexistent/file")
        self.assertIn("/nonexistent/file", str(cm.exception))
        with tempfile.NamedTemporaryFile("w", suffix=".data") as f:
            f.write("garbage\n")
            f.flush()
            with self.assertRaises(PlanError) as cm:
                plan_out("-t", f.name)
            self.assertIn(f.name, str(cm.exception))

    def test_util_file(self) -> None:
        c = parse_text(open(EVAC).read())
        with tempfile.NamedTemporaryFile("w") as f:
            for k, name in enumerate(c.instances):
                f.write(f"{name} {k * 3.0} 0 0 0\n")
            f.flush()
            plain = json.loads(plan_out("-t", EVAC, "--json"))
            loaded = json.loads(plan_out("-t", EVAC, "--json", "-U", f.name))
            ignored = json.loads(plan_out("-t", EVAC, "--json", "-U", f.name, "--ignore-dynu"))
        self.assertNotEqual(loaded["initial_score"], plain["initial_score"])
        self.assertEqual(ignored["initial_score"], plain["initial_score"])


class LiveClusterTests(SynchronousTestCase):
    """``-m URL`` against the simulator in a child process (its own reactor)."""

    def test_rapi_matches_text_export(self) -> None:
        tmp = tempfile.mkdtemp()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        log = open(os.path.join(tmp, "log"), "w+")
        sim = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "ganeti-sim", "--plain-http", "--workdir", tmp],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = None
            for _ in range(300):
                log.seek(0)
                m = re.search(r"RAPI: (http://127\.0\.0\.1:\d+)", log.read())
                if m and "Site starting" in open(log.name).read():
                    url = m.group(1)
                    break
                if sim.poll() is not None:
                    break
                time.sleep(0.1)
            self.assertIsNotNone(url, open(log.name).read())
            assert url is not None
            saved = os.path.join(tmp, "sim.data")
            cmd = [
                sys.executable, "-m", "maintd.admin.plan", "-m", url,
                "--rapi-user", "maintd", "--rapi-password-file", os.path.join(tmp, "rapi-password"),
            ]  # fmt: skip
            groups = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            self.assertEqual(groups.returncode, 1, groups.stderr)
            group = re.search(r"groups: (\S+?),", groups.stderr)
            assert group is not None, groups.stderr
            live = subprocess.run(
                cmd + ["-G", group.group(1), "--json", "-S", saved],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            self.assertEqual(live.returncode, 0, live.stderr)
            doc = json.loads(live.stdout)
            again = json.loads(plan_out("-t", saved, "-G", group.group(1), "--json"))
            self.assertAlmostEqual(again["initial_score"], doc["final_score"], 9)
            bad = subprocess.run(
                cmd[:4] + ["http://127.0.0.1:1"] + cmd[5:],
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(bad.returncode, 2)
            self.assertIn("127.0.0.1:1", bad.stderr)
        finally:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(timeout=20)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
            log.close()
