"""Benchmark: the daemon's HTTP API under concurrent readers.

Starts the real daemon (``twistd -n ganeti-maintd``) on 127.0.0.1 with 1,000
incidents in its state and a short round delay (so rounds run, commit and
the API re-encodes during the run), then reads ``/1/status`` from
``--clients`` concurrent keep-alive HTTP/1.1 connections for ``--seconds``
and prints requests per second and p50/p99 latency.  Target on a 2-core
machine: >= 3,000 req/s with p99 < 25 ms.  A benchmark, not a test: it
prints figures and exits 0 unless the daemon misbehaves.

    .venv/bin/python bench/http_api.py [--clients 16] [--seconds 5] [--path /1/status]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from maintd.daemon.state import Action, Incident, MaintState, RepairStatus
from maintd.daemon.store import StateStore

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def state_with(n: int) -> MaintState:
    statuses = list(RepairStatus)
    incidents = tuple(
        Incident(
            uuid=f"00000000-0000-4000-8000-{i:012d}",
            node=f"node-uuid-{i % 40}",
            node_name=f"node{i % 40}.example.com",
            original={
                "status": "live-repair",
                "command": "repair-disk",
                "details": {"disk": f"sd{chr(97 + i % 26)}", "errors": i},
            },
            action=Action.LIVE_REPAIR,
            status=statuses[i % len(statuses)],
            jobs=(10_000 + i,),
            tag=f"maintd:repairready:00000000-0000-4000-8000-{i:012d}",
            ctime=1_700_000_000.0 + i,
            mtime=1_700_000_100.0 + i,
            serial_no=2,
        )
        for i in range(n)
    )
    return MaintState(incidents=incidents, jobs=tuple(range(10_000, 10_050)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(port: int, proc: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited with {proc.returncode}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit("daemon did not start listening")


class _Client(asyncio.Protocol):
    """One keep-alive connection issuing GETs back to back until ``until``.

    The body is counted, not kept: the client must cost far less than the
    server it measures.
    """

    def __init__(self, request: bytes, until: float, latencies: list[float], sizes: set[int]):
        self.request = request
        self.until = until
        self.latencies = latencies
        self.sizes = sizes
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.remaining = -1
        self.t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        if time.monotonic() >= self.until:
            self.transport.close()
            return
        self.head, self.remaining = b"", -1
        self.t0 = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.remaining < 0:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.head[:end], self.head[end + 4 :]
            if head.split(b" ", 2)[1] != b"200":
                self.fail(f"HTTP {head.split(b' ', 2)[1].decode()}")
                return
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            self.sizes.add(length)
            self.remaining = length - len(rest)
        else:
            self.remaining -= len(data)
        if self.remaining == 0:
            self.latencies.append(time.perf_counter() - self.t0)
            self.send()
        elif self.remaining < 0:
            self.fail("more bytes than Content-Length")

    def fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(SystemExit(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def client(
    port: int, path: str, until: float, latencies: list[float], sizes: set[int], gzip: bool
) -> None:
    accept = "Accept-Encoding: gzip\r\n" if gzip else ""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}\r\n".encode()
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: _Client(request, until, latencies, sizes), "127.0.0.1", port
    )
    await proto.done


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def measure(
    port: int, path: str, clients: int, warmup: float, seconds: float, gzip: bool
) -> tuple[list[float], set[int], float]:
    await asyncio.gather(
        *(client(port, path, time.monotonic() + warmup, [], set(), gzip) for _ in range(clients))
    )
    latencies: list[float] = []
    sizes: set[int] = set()
    start = time.monotonic()
    until = start + seconds
    await asyncio.gather(
        *(client(port, path, until, latencies, sizes, gzip) for _ in range(clients))
    )
    return latencies, sizes, time.monotonic() - start


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--incidents", type=int, default=1000)
    ap.add_argument("--round-delay", default="1")
    ap.add_argument("--path", default="/1/status")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="maintd-bench.") as tmp:
        state_dir = os.path.join(tmp, "state")
        store = StateStore.open(state_dir)
        store.commit(state_with(args.incidents))
        store.close()
        port = free_port()
        log_path = os.path.join(tmp, "daemon.log")
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                TWISTD
                + [
                    "-n",
                    "--pidfile=",
                    "ganeti-maintd",
                    "-p",
                    str(port),
                    "-b",
                    "127.0.0.1",
                    "--state-dir",
                    state_dir,
                    "--no-voting",
                    "--yes-do-it",
                    "--rapi",
                    "http://127.0.0.1:1",
                    "--round-delay",
                    args.round_delay,
                    # no cluster, no agents: no HMAC key needed
                    "--allow-unsigned-reports",
                    "--agent-plain-http",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        try:
            await wait_ready(port, proc)
            results = {}
            for gzip in (True, False):
                results[gzip] = await measure(
                    port, args.path, args.clients, args.warmup, args.seconds, gzip
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        with open(log_path, "rb") as f:
            rounds = f.read().count(b"] round ")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"GET {args.path} with {args.incidents} incidents in the state, {args.clients} "
        f"keep-alive clients, rounds every {args.round_delay}s ({rounds} rounds logged); "
        f"{os.cpu_count()} CPUs, load average {load}"
    )
    for gzip, (latencies, sizes, elapsed) in results.items():
        rate = len(latencies) / elapsed
        p50 = percentile(latencies, 50) * 1000
        p99 = percentile(latencies, 99) * 1000
        met = "met" if rate >= 3000 and p99 < 25 else "NOT met"
        print(
            f"  {'gzip    ' if gzip else 'identity'} body {max(sizes):>7} B: "
            f"{len(latencies):>6} requests in {elapsed:.1f}s = {rate:>6,.0f} req/s, "
            f"p50 {p50:6.2f} ms, p99 {p99:6.2f} ms  (target >=3,000 req/s, p99 <25 ms: {met})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
