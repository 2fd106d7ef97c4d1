"""Fuzz a running ganeti-maintd's HTTP API; an operator's tool (issue 16).

    python bench/fuzz_http.py --url http://127.0.0.1:1816 [--count N] [--seconds S]
                              [--pid PID] [--seed N] [--slow N] [--allow-remote]
    python bench/fuzz_http.py [--count N] ...   # starts its own daemon (make bench)

Without ``--url`` it starts the real daemon (``twistd -n ganeti-maintd``, as
bench/http_api.py does: 127.0.0.1, a temporary state dir, default limits)
and fuzzes that, with ``--pid`` set to it.

Sends ``--count`` random requests (random methods, paths, percent-escapes,
invalid UTF-8, long URIs and headers, broken request lines, bodies, raw
bytes, pipelining, half-sent requests), at most for ``--seconds``, and checks
every answer: a 2xx or 4xx status with a JSON body (or no answer at all when
the request could not be parsed and the connection was closed).  Anything
else (5xx, a non-JSON body, a hang) is counted and the first examples are
printed.  At the end ``/1/status`` must still answer.

``--slow N`` first opens N connections that send a request one byte per
second (a slow-header attacker), checks that ``/1/status`` answers
meanwhile, and reports how many were still open after each second and when
the daemon dropped them.

With ``--pid`` the daemon's open file descriptors and RSS are printed before
and after (from /proc; run as the daemon's user or root).

Only loopback targets are accepted unless ``--allow-remote`` is given: this
sends garbage on purpose.  Exit status: 0 when every answer was fine, 1
otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote_from_bytes, urlsplit

#: Seconds of silence after which an answer is taken as complete.
QUIET = 0.3
PATHS = ["/", "/1", "/1/", "/1/status", "/1/jobs", "/1/evacuated", "/1/last-round",
         "/1/overview", "/2", "/1/status/x", "/favicon.ico", "//", "/1//status"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
           "get", "BREW", "G", "GET\x00", "X" * 64]
HEADERS = ["Host: x", "Accept-Encoding: gzip", "Accept-Encoding: gzip;q=0", "Connection: close",
           "Content-Length: 5", "Content-Length: -1", "Content-Length: 99999999999999999999",
           "Transfer-Encoding: chunked", "Expect: 100-continue", "Upgrade: h2c",
           "X-Long: " + "a" * 8000, "Bad Header", ": empty", "Cookie: \xff"]


def _die(message: str) -> None:
    print(f"fuzz_http: {message}", file=sys.stderr)
    raise SystemExit(2)


def target(url: str, allow_remote: bool) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        _die(f"--url must be http://HOST:PORT, not {url!r}")
    host, port = parts.hostname, parts.port or 1816
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        _die(f"cannot resolve {host}: {e}")
    addresses = {info[4][0] for info in infos}
    remote = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if remote and not allow_remote:
        _die(f"{host} is not a loopback address ({', '.join(sorted(remote))}); "
             "pass --allow-remote to fuzz another host's daemon")
    return host, port


# --- request generation -------------------------------------------------------


def _path(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(PATHS)
    if kind == 1:
        return "/" + quote_from_bytes(rng.randbytes(rng.randrange(1, 30)), safe="/")
    if kind == 2:
        return rng.choice(PATHS) + "?" + "x" * rng.choice([1, 100, 15000])
    if kind == 3:
        return "/" + "%" + rng.choice(["ff", "c3%28", "00", "zz", "", "2f", "e2%82"])
    if kind == 4:
        return rng.choice(PATHS) + rng.choice(["/..", "/./", "%2e%2e", ";x", "#frag", "\\"])
    return "/" + "/".join(rng.choice(["1", "status", "\u00e9", "a" * 300, ".."]) for _ in range(3))


def request(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:  # raw bytes
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:  # pipelined good and bad requests
        return b"".join(request(rng) if rng.random() < 0.3 else
                        b"GET /1/status HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(3))
    method = rng.choice(METHODS)
    version = rng.choice(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/0.9", "HTTP/2", "", "HTTP/1.1 x"])
    line = f"{method} {_path(rng)} {version}".rstrip()
    headers = rng.sample(HEADERS, rng.randrange(0, 4))
    body = rng.randbytes(rng.randrange(0, 10)) if rng.random() < 0.2 else b""
    head = line + "\r\n" + "".join(h + "\r\n" for h in headers)
    if rng.random() < 0.05:
        return head.encode("utf-8", "replace")  # headers never finished
    return (head + "\r\n").encode("utf-8", "replace") + body


# --- answers --------------------------------------------------------------------


def _read_answer(sock: socket.socket, quiet: float, timeout: float) -> bytes:
    """What the server sends until it closes, or ``quiet`` seconds after its last data.

    When nothing came within ``quiet`` seconds the request may be incomplete
    (the daemon waits for the rest): the write side is then shut, so the
    daemon sees the end and closes.  (Shutting it at once would make the
    daemon drop answers it had not written yet.)
    """
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    shut = False
    sock.settimeout(quiet)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            if chunks or shut:
                break
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                break
            shut = True
            continue
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def heads(data: bytes) -> list[bool]:
    """For each request in ``data`` (as far as can be told): is it a HEAD?"""
    return [m == b"HEAD" for m in re.findall(rb"(?:^|\r\n\r\n)([A-Za-z]+) ", data)]


def check(raw: bytes, head_requests: list[bool]) -> str | None:
    """None when every answer in ``raw`` is 2xx/4xx JSON; else what is wrong."""
    n = 0
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            return f"incomplete answer {raw[:80]!r}"
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return f"not an HTTP answer {lines[0][:80]!r}"
        code = int(parts[1])
        if code == 100:  # "100 Continue": an interim answer, the real one follows
            raw = rest
            continue
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if not (200 <= code < 300 or 400 <= code < 500):
            return f"HTTP {code}"
        if headers.get(b"content-type") != b"application/json":
            return f"HTTP {code} with content type {headers.get(b'content-type')!r}"
        length = int(headers.get(b"content-length", b"%d" % len(rest)))
        # a HEAD's answer has no body, unless the request could not be parsed
        # (a 400 that closes the connection)
        if n < len(head_requests) and head_requests[n] and not (
            code == 400 and headers.get(b"connection") == b"close"
        ):
            length = 0
        n += 1
        body, raw = rest[:length], rest[length:]
        if body and headers.get(b"content-encoding") != b"gzip":
            try:
                json.loads(body)
            except ValueError:
                return f"HTTP {code} body is not JSON: {body[:80]!r}"
    return None


def exchange(address: tuple[str, int], data: bytes, timeout: float) -> tuple[bytes, str | None]:
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(data)
            raw = _read_answer(sock, QUIET, timeout)
    except OSError as e:
        return b"", f"connection failed: {e}"
    return raw, check(raw, heads(data))


def status_ok(address: tuple[str, int], timeout: float = 5.0) -> tuple[bool, float]:
    start = time.monotonic()
    raw, problem = exchange(address, b"GET /1/status HTTP/1.1\r\nHost: x\r\n"
                            b"Connection: close\r\n\r\n", timeout)
    return raw.startswith(b"HTTP/1.1 200 ") and problem is None, time.monotonic() - start


# --- the daemon's process ---------------------------------------------------------


def process(pid: int | None) -> str:
    if pid is None:
        return ""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as f:
            rss = next(line.split()[1] for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration) as e:
        return f"(pid {pid}: {e})"
    return f"{fds} open fds, RSS {int(rss) / 1024:.1f} MB"


# --- slow-header attacker ---------------------------------------------------------


def slow_attack(address: tuple[str, int], n: int, limit: float) -> None:
    text = b"GET /1/status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000
    socks: list[socket.socket] = []
    for _ in range(n):
        try:
            s = socket.create_connection(address, timeout=5)
        except OSError as e:
            print(f"  slow: connection {len(socks) + 1} failed: {e}")
            break
        s.setblocking(False)
        socks.append(s)
    print(f"  slow: {len(socks)} connections opened, each sending one byte per second")
    opened = len(socks)
    start = time.monotonic()
    sent = 0
    dropped_at: list[float] = []
    while socks and time.monotonic() - start < limit:
        alive = []
        for s in socks:
            try:
                s.send(text[sent:sent + 1])
                if s.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionResetError
                alive.append(s)
            except BlockingIOError:
                alive.append(s)
            except OSError:
                dropped_at.append(time.monotonic() - start)
                s.close()
        socks = alive
        sent += 1
        ok, took = status_ok(address)
        print(f"  slow: t={time.monotonic() - start:4.1f}s  attacker connections still open: "
              f"{len(socks):4d}/{opened}  /1/status {'answered' if ok else 'FAILED'} "
              f"in {took * 1000:.1f} ms")
        time.sleep(1.0)
    for s in socks:
        s.close()
    if dropped_at:
        print(f"  slow: {len(dropped_at)} dropped by the daemon, first after "
              f"{min(dropped_at):.1f}s, last after {max(dropped_at):.1f}s; "
              f"{len(socks)} still open when the attack stopped")


# --- main -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None,
                   help="the daemon's HTTP API [default: start a daemon on 127.0.0.1]")
    p.add_argument("--count", type=int, default=10000, help="requests to send (10000)")
    p.add_argument("--seconds", type=float, default=300.0, help="stop after this long (300)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait per answer (5)")
    p.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    p.add_argument("--concurrency", type=int, default=32, help="connections at once (32)")
    p.add_argument("--pid", type=int, default=None, help="the daemon's pid: print fds and RSS")
    p.add_argument("--slow", type=int, default=0, metavar="N",
                   help="first hold N slow-header connections (0: no)")
    p.add_argument("--slow-seconds", type=float, default=20.0, help="how long (20)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a target that is not a loopback address")
    args = p.parse_args(argv)
    if args.count < 0 or args.seconds <= 0:
        _die("--count must be >= 0 and --seconds > 0")
    if args.url is None:
        return spawned(args)
    return run(args)


def spawned(args: argparse.Namespace) -> int:
    """:func:`run` against a daemon started for it."""
    from http_api import TWISTD, free_port  # bench/http_api.py

    with tempfile.TemporaryDirectory(prefix="maintd-fuzz.") as tmp:
        port = free_port()
        log_path = os.path.join(tmp, "daemon.log")
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [*TWISTD, "-n", "--pidfile=", "ganeti-maintd", "-p", str(port), "-b",
                 "127.0.0.1", "--state-dir", os.path.join(tmp, "state"), "--no-voting",
                 "--yes-do-it", "--rapi", "http://127.0.0.1:1", "--round-delay", "5",
                 "--allow-unsigned-reports", "--agent-plain-http"],  # no cluster: no key
                stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp,
            )
        try:
            deadline = time.monotonic() + 30
            while not status_ok(("127.0.0.1", port), 1.0)[0]:
                if proc.poll() is not None or time.monotonic() > deadline:
                    _die(f"the daemon did not start (see {log_path})")
                time.sleep(0.2)
            args.url = f"http://127.0.0.1:{port}"
            args.pid = proc.pid
            code = run(args)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        with open(log_path, "rb") as f:
            log = f.read()
        # (rounds fail: there is no cluster behind the RAPI URL; that is not it)
        loud = [line for line in log.splitlines() if b"Traceback" in line
                or b"#critical]" in line or b"Unhandled" in line or b"maintd.daemon.api" in line
                or b"twisted.web" in line]
        print(f"  daemon log: {len(log.splitlines())} lines, {len(loud)} about HTTP or "
              "tracebacks")
        for line in loud[:5]:
            print(f"    {line[:200]!r}")
        return 1 if loud else code


def run(args: argparse.Namespace) -> int:
    address = target(args.url, args.allow_remote)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(f"fuzz_http: {args.url}, {args.count} requests, at most {args.seconds:g}s, seed {seed}")
    ok, took = status_ok(address)
    if not ok:
        _die(f"{args.url}/1/status does not answer 200 JSON; is the daemon running?")
    before = process(args.pid)
    if before:
        print(f"  daemon before: {before}")
    if args.slow:
        slow_attack(address, args.slow, args.slow_seconds)
    start = time.monotonic()
    sent = bad = 0
    codes: dict[str, int] = {}
    examples: list[str] = []

    def one(data: bytes) -> tuple[bytes, bytes, str | None]:
        if time.monotonic() - start > args.seconds:
            return data, b"", "skipped"
        return (data, *exchange(address, data, args.timeout))

    requests = [request(rng) for _ in range(args.count)]
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for data, raw, problem in pool.map(one, requests):
            if problem == "skipped":
                continue
            sent += 1
            first = (raw.split(b" ", 2)[1].decode("ascii", "replace")
                     if raw.count(b" ") >= 2 else "-")
            codes[first] = codes.get(first, 0) + 1
            if problem is not None and raw:
                bad += 1
                if len(examples) < 10:
                    examples.append(f"{problem}  <- {data[:100]!r}")
    took = time.monotonic() - start
    print(f"  {sent} requests in {took:.1f}s ({sent / took:.0f}/s); first status of each "
          f"answer: {dict(sorted(codes.items()))} ('-': closed without an answer)")
    after = process(args.pid)
    if after:
        print(f"  daemon after:  {after}")
    ok, took = status_ok(address)
    print(f"  /1/status afterwards: {'200 JSON' if ok else 'FAILED'} in {took * 1000:.1f} ms")
    for line in examples:
        print(f"  BAD: {line}")
    print(f"  {bad} bad answers")
    return 0 if bad == 0 and ok else 1


if __name__ == "__main__":
    sys.exit(main())
