"""Planner vs the real hbal on generated clusters (same text file, same options).

For each size a deterministic cluster (fixed seed) is written as hbal text
data; ``ganeti-maintd-plan -t FILE --json`` and ``hbal -t FILE`` run on it as
child processes, one after the other.  The table shows initial and final
score of both, the number of moves, wall and CPU time of both, the ratio
hbal/ours of wall time, and each process's peak RSS.  Where the two move
lists differ, the first differing move is printed (hbal's line and ours).
A per-step cost curve follows each size: step number, our search's CPU
seconds for that step, hbal's wall seconds for it (hbal runs on a pty, so
its solution lines come out as it finds them and are timestamped), and the
ratio.  Before the curve, the CPU time our process spent compiling the
numba scoring kernel (or loading it from numba's cache) is printed; it is
not part of step 1.  Where a size gets a move cap, both tools get the same ``-l``; hbal
runs under a time limit and shows ``timeout`` when it does not finish (its
curve then stops where it stopped).

Usage: .venv/bin/python bench/balance.py [--sizes 50x400,200x2000,1000x15000:30]
                                         [--hbal-timeout S]
(the package is installed in the venv; run the script with the venv's Python)
The box is shared: the load average is printed with the figures; CPU time is
the fairer figure on a loaded machine, wall time is what an operator waits.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time

from maintd.decide.balance.gen import generate_cluster
from maintd.decide.balance.jobsets import common_suffix, hbal_line
from maintd.decide.balance.moves import Move
from maintd.decide.balance.planner import PlannedMove
from maintd.decide.balance.text import format_text

HBAL = "/usr/lib/ganeti/3.0/usr/bin/hbal"
DEFAULT_SIZES = "50x400,200x2000,1000x15000:30"
_LINE = re.compile(r"^\s+\d+\. ")


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


def run_on_pty(cmd: list[str], timeout: float) -> tuple[str, list[float], float, float, int, bool]:
    """Like :func:`run_measured` on a pty; also the wall time at which each
    solution line appeared (hbal flushes per line on a terminal)."""
    start = time.monotonic()
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.DEVNULL, close_fds=True)
    os.close(slave)
    buf, stamps, text = b"", [], []
    timed_out = False
    while True:
        left = start + timeout - time.monotonic()
        if left <= 0:
            proc.kill()
            timed_out = True
            break
        ready, _, _ = select.select([master], [], [], min(left, 1.0))
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the pty
            break
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            s = line.decode(errors="replace").rstrip("\r")
            text.append(s)
            if _LINE.match(s):
                stamps.append(time.monotonic() - start)
    _pid, _status, ru = os.wait4(proc.pid, 0)
    os.close(master)
    wall = time.monotonic() - start
    return "\n".join(text), stamps, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, timed_out


def our_lines(doc: dict, names: list[str]) -> list[str]:
    """Our moves as hbal's solution lines (same aliases and widths)."""
    suffix = common_suffix(names)
    nodes = [n for n in names if not n.startswith("inst")]
    insts = [n for n in names if n.startswith("inst")]
    imlen = max((len(i) - len(suffix) for i in insts), default=0)
    nmlen = max((len(n) - len(suffix) for n in nodes), default=0)
    kinds = {m.short: m for m in Move}
    out = []
    for k, m in enumerate(doc["moves"], 1):
        pm = PlannedMove(
            instance=m["instance"],
            kind=kinds[m["kind"]],
            old_primary=m["from"],
            old_secondary=m["from_secondary"],
            new_primary=m["new_primary"],
            new_secondary=m["new_secondary"],
            score=m["score"],
        )
        out.append(hbal_line(k, pm, imlen, nmlen, suffix).rstrip())
    return out


def curve_points(n: int) -> list[int]:
    pts = {1, 2, 3, n}
    k = 5
    while k < n:
        pts.update((k, 2 * k, 5 * k))
        k *= 10
    return sorted(p for p in pts if 1 <= p <= n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="NODESxINSTANCES[:MAXMOVES],...")
    ap.add_argument(
        "--hbal-timeout",
        type=float,
        default=300.0,
        help="wall-time limit of each hbal run",
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
    with tempfile.TemporaryDirectory() as tmp:
        for k, spec in enumerate(args.sizes.split(",")):
            size, _, cap = spec.partition(":")
            nodes, instances = (int(x) for x in size.split("x"))
            path = os.path.join(tmp, f"c{nodes}.data")
            cluster = generate_cluster(nodes, instances, seed=args.seed + k)
            with open(path, "w") as f:
                f.write(format_text(cluster))
            limit = ["-l", cap] if cap else []
            out, wall_o, cpu_o, rss_o, _ = run_measured(
                plan_cmd + ["-t", path, "--json"] + limit, timeout=24 * 3600
            )
            doc = json.loads(out)
            hout, stamps, wall_h, cpu_h, rss_h, to = run_on_pty(
                [HBAL, "-t", path] + limit, timeout=args.hbal_timeout
            )
            m_ini = re.search(r"Initial score: (\S+)", hout)
            m_fin = re.search(r"improved from \S+ to (\S+)", hout)
            h_lines = [s.rstrip() for s in hout.splitlines() if _LINE.match(s)]
            ini_h = m_ini.group(1) if m_ini else "-"
            fin_h = (m_fin.group(1) if m_fin else ini_h) if not to else "timeout"
            ratio = f"{wall_h / wall_o:6.1f}" if wall_o > 0 else "-"
            print()
            print(head)
            print("-" * len(head))
            print(
                f"{nodes:>5}/{instances:<6} {cap or '-':>4} | {doc['initial_score']:12.8f} {ini_h:>12} | "
                f"{doc['final_score']:12.8f} {fin_h:>12} | {len(doc['moves']):>4} "
                f"{len(h_lines) if not to else '-':>4} | {wall_o:8.1f}s {wall_h:8.1f}s{'+' if to else ' '}"
                f"{ratio} | {cpu_o:7.1f}s {cpu_h:7.1f}s | {rss_o / 1024:6.0f}MB {rss_h / 1024:6.0f}MB",
                flush=True,
            )
            mine = our_lines(doc, list(cluster.nodes) + list(cluster.instances))
            diff = next(
                (j for j, (a, b) in enumerate(zip(h_lines, mine, strict=False)) if a != b), None
            )
            if diff is not None:
                print(
                    f"  first differing move: {diff + 1}\n   hbal: {h_lines[diff]}\n   ours: {mine[diff]}"
                )
            elif to:
                print(f"  moves equal as far as hbal got ({len(h_lines)} moves)")
            elif len(h_lines) != len(mine):
                print(f"  same first {min(len(h_lines), len(mine))} moves, lengths differ")
            else:
                print("  move lists identical")
            print(
                f"  scoring kernel: {doc.get('kernel_seconds', 0.0):.2f} s CPU to compile or load "
                "from numba's cache (before step 1)"
            )
            steps = doc.get("step_seconds", [])
            h_step = [b - a for a, b in zip([0.0, *stamps], stamps, strict=False)]
            print(f"  {'step':>6} {'ours cpu s':>11} {'hbal wall s':>12} {'ratio':>7}")
            for p in curve_points(len(steps)):
                ours_s = steps[p - 1]
                if p <= len(h_step):
                    hs = h_step[p - 1]
                    print(f"  {p:>6} {ours_s:11.4f} {hs:12.3f} {hs / ours_s:7.0f}")
                else:
                    print(f"  {p:>6} {ours_s:11.4f} {'-':>12} {'-':>7}")
            print(
                "  (step 1 includes hbal's loading and first full scoring; the last "
                "step of ours is the one that found no move)",
                flush=True,
            )
    print(
        f"\nload at end={os.getloadavg()[0]:.1f}; '+' = hbal hit the time limit (ratio is a lower bound)"
    )


if __name__ == "__main__":
    main()
