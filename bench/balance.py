"""Planner vs the real hbal on generated clusters (same text file, same options).

For each size a deterministic cluster (fixed seed) is written as hbal text
data; ``ganeti-maintd-plan -t FILE --json`` and ``hbal -t FILE`` run on it as
child processes, one after the other, and the table shows initial and final
score of both, the number of moves, wall and CPU time of both, the ratio
hbal/ours of wall time, and each process's peak RSS.  Where a size gets a
move cap, both tools get the same ``-l``; hbal runs under a time limit and
shows ``timeout`` when it does not finish.

Usage: .venv/bin/python bench/balance.py [--sizes 50x400:20,200x2000:1,1000x15000:1]
                                         [--hbal-timeout S]
(the package is installed in the venv; run the script with the venv's Python)
The box is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from maintd.decide.balance.gen import generate_cluster
from maintd.decide.balance.text import format_text

HBAL = "/usr/lib/ganeti/3.0/usr/bin/hbal"
DEFAULT_SIZES = "50x400:20,200x2000:1,1000x15000:1"


def run_measured(cmd: list[str], timeout: float) -> tuple[str, float, float, int, bool]:
    """stdout, wall s, CPU s, peak RSS KiB, timed out."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as outf:
        proc = subprocess.Popen(cmd, stdout=outf, stderr=subprocess.DEVNULL, text=True)
        timed_out = False
        deadline = start + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
        proc.returncode = status
        wall = time.monotonic() - start
        outf.seek(0)
        out = outf.read()
    return out, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, timed_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="NODESxINSTANCES[:MAXMOVES],...")
    ap.add_argument(
        "--hbal-timeout",
        type=float,
        default=200.0,
        help="wall-time limit of each hbal run (the defaults keep the whole run under ~10 min)",
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    plan_cmd = [sys.executable, "-m", "maintd.admin.plan"]
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} hbal={HBAL}")
    head = (
        f"{'size':>12} {'cap':>4} | {'ini ours':>12} {'ini hbal':>12} | {'fin ours':>12} "
        f"{'fin hbal':>12} | {'mv':>4} {'mv':>4} | {'wall ours':>9} {'wall hbal':>9} "
        f"{'ratio':>6} | {'cpu ours':>8} {'cpu hbal':>8} | {'rss ours':>8} {'rss hbal':>8}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for k, spec in enumerate(args.sizes.split(",")):
            size, _, cap = spec.partition(":")
            nodes, instances = (int(x) for x in size.split("x"))
            path = os.path.join(tmp, f"c{nodes}.data")
            with open(path, "w") as f:
                f.write(format_text(generate_cluster(nodes, instances, seed=args.seed + k)))
            limit = ["-l", cap] if cap else []
            out, wall_o, cpu_o, rss_o, _ = run_measured(
                plan_cmd + ["-t", path, "--json"] + limit, timeout=24 * 3600
            )
            doc = json.loads(out)
            hout, wall_h, cpu_h, rss_h, to = run_measured(
                [HBAL, "-t", path] + limit, timeout=args.hbal_timeout
            )
            m_ini = re.search(r"Initial score: (\S+)", hout)
            m_fin = re.search(r"improved from \S+ to (\S+)", hout)
            h_moves = len(re.findall(r"^\s+\d+\. ", hout, re.M))
            ini_h = m_ini.group(1) if m_ini else "-"
            fin_h = (m_fin.group(1) if m_fin else ini_h) if not to else "timeout"
            ratio = f"{wall_h / wall_o:6.1f}" if wall_o > 0 else "-"
            print(
                f"{nodes:>5}/{instances:<6} {cap or '-':>4} | {doc['initial_score']:12.8f} {ini_h:>12} | "
                f"{doc['final_score']:12.8f} {fin_h:>12} | {len(doc['moves']):>4} "
                f"{h_moves if not to else '-':>4} | {wall_o:8.1f}s {wall_h:8.1f}s{'+' if to else ' '}"
                f"{ratio} | {cpu_o:7.1f}s {cpu_h:7.1f}s | {rss_o / 1024:6.0f}MB {rss_h / 1024:6.0f}MB",
                flush=True,
            )
    print(
        f"load at end={os.getloadavg()[0]:.1f}; '+' = hbal hit the time limit (ratio is a lower bound)"
    )


if __name__ == "__main__":
    main()
