"""Score fidelity against the real hbal (Ganeti 3.0 htools).

The initial score must equal hbal's to the last printed digit; our final
score must equal hbal's (same greedy search), and hbal reading our saved
final state must print our final score as its initial score.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from maintd.decide.balance.gen import generate_cluster
from maintd.decide.balance.planner import Options, final_cluster, plan
from maintd.decide.balance.score import build_state, compute_cv, detailed_cv
from maintd.decide.balance.text import format_text, parse_text
from tests.test_balance_text import data_files, read
from tests.tools import find_tool


def run_hbal(hbal: str, path: str, *args: str) -> str:
    return subprocess.run(
        [hbal, "-t", path, *args], capture_output=True, text=True, timeout=600, check=False
    ).stdout


def hbal_scores(out: str) -> tuple[str | None, str | None]:
    ini = re.search(r"Initial score: (\S+)", out)
    fin = re.search(r"improved from \S+ to (\S+)", out)
    first = ini.group(1) if ini else None
    return first, (fin.group(1) if fin else first)


def groups_of(path: str) -> list[str | None]:
    c = parse_text(read(path))
    used = sorted({n.group for n in c.nodes.values()})
    return [None] if len(used) <= 1 else list(used)


class ScoreFidelity(SynchronousTestCase):
    def setUp(self) -> None:
        self.hbal = find_tool("hbal")

    def test_initial_score_on_ganeti_test_data(self) -> None:
        compared = 0
        for path in data_files():
            c = parse_text(read(path))
            for group in groups_of(path):
                args = ["-G", group] if group else []
                want, _ = hbal_scores(run_hbal(self.hbal, path, *args))
                if want is None:
                    continue
                got = f"{compute_cv(build_state(c, group)):.8f}"
                self.assertEqual(got, want, f"{path} group {group}")
                compared += 1
        self.assertGreater(compared, 30)

    def test_detailed_components_on_ganeti_test_data(self) -> None:
        # hbal -v -v -v prints every component with 8 decimals.
        for name in ("hbal-location-exclusion.data", "hbal-forth.data", "hbal-evac.data"):
            path = [p for p in data_files() if p.endswith(name)][0]
            out = run_hbal(self.hbal, path, "-v", "-v", "-v", "-l", "0")
            want = dict(re.findall(r"^\s+(\w+)\s+(-?[\d.]+|NaN)\s+x", out, re.M))
            got = detailed_cv(build_state(parse_text(read(path))))
            from maintd.decide.balance.score import METRICS

            self.assertTrue(want, out)
            for (_w, metric, _k), value in zip(METRICS, got, strict=True):
                self.assertEqual(f"{value:.8f}", want[metric], f"{name} {metric}")

    def test_final_score_on_ganeti_test_data(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for path in data_files():
                c = parse_text(read(path))
                for group in groups_of(path):
                    args = ["-G", group] if group else []
                    _ini, want = hbal_scores(run_hbal(self.hbal, path, *args))
                    if want is None:
                        continue
                    result = plan(c, group=group)
                    self.assertEqual(f"{result.final_score:.8f}", want, f"{path} {group}")
                    saved = os.path.join(tmp, "final.data")
                    with open(saved, "w") as f:
                        f.write(format_text(final_cluster(c, result)))
                    reread, _ = hbal_scores(run_hbal(self.hbal, saved, *args))
                    self.assertEqual(reread, f"{result.final_score:.8f}", f"{path} saved")

    def test_generated_clusters(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for nodes, insts, seed in ((6, 30, 11), (10, 60, 12)):
                c = generate_cluster(nodes, insts, seed=seed)
                path = os.path.join(tmp, f"g{seed}.data")
                with open(path, "w") as f:
                    f.write(format_text(c))
                want_ini, want_fin = hbal_scores(run_hbal(self.hbal, path))
                result = plan(parse_text(read(path)), Options())
                self.assertEqual(f"{result.initial_score:.8f}", want_ini)
                assert want_fin is not None
                # Never worse than hbal (equal unless a float tie broke differently).
                self.assertLessEqual(round(result.final_score, 8), float(want_fin) + 1e-8)
                saved = os.path.join(tmp, f"g{seed}.final")
                with open(saved, "w") as f:
                    f.write(format_text(final_cluster(c, result)))
                reread, _ = hbal_scores(run_hbal(self.hbal, saved))
                self.assertEqual(reread, f"{result.final_score:.8f}")

    def test_options_match_hbal(self) -> None:
        path = [p for p in data_files() if p.endswith("hbal-evac.data")][0]
        c = parse_text(read(path))
        for args, opts in (
            (["--no-disk-moves"], Options(disk_moves=False)),
            (["-l", "2"], Options(max_length=2)),
            (["--evac-mode"], Options(evac_mode=True)),
            (["-g", "5", "--min-gain-limit", "50"], Options(min_gain=5, min_gain_limit=50)),
        ):
            _ini, want = hbal_scores(run_hbal(self.hbal, path, *args))
            self.assertEqual(f"{plan(c, opts).final_score:.8f}", want, args)
