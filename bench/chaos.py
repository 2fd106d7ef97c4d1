"""kill -9 chaos: evacuations of three nodes survive SIGKILLs at random moments.

A simulated cluster (``twistd ganeti-sim``, plain HTTP on 127.0.0.1) with nine
nodes, three of which (n3, n5, n7) report ``evacuate``.  ganeti-maintd runs as
a real process (``twistd -n ganeti-maintd``, 0.2 s round delay) on one state
directory; the driver kills it with SIGKILL after a random time (before its
first round, mid-round, between a job submission and its commit ...) and
starts it again on the same state dir, ``--kills`` times.  Then one last
daemon runs until every incident is completed.

Verdict (exit status 0 only when all hold):

- every incident is ``completed`` (one per failing node, the node tagged);
- Ganeti's job list holds no operation twice: each (opcode, object) of a job
  of ours once -- a drain per node, one migration per primary, one new
  secondary per instance, one tag per incident;
- every job carries a maintd reason.

    .venv/bin/python bench/chaos.py [--kills 100] [--seed 1] [--max-alive 2.0] [--primaries 40]
                                [--job-seconds 0.3] [--workdir DIR] [--json]

Timing depends on the machine (each daemon start imports Twisted and the
daemon: about a second on a loaded machine); 100 kills take a few minutes.
"""

from __future__ import annotations

import argparse
import base64
import collections
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
FAILING = ("n3", "n5", "n7")
EVACUATE = {"status": "evacuate", "command": None, "details": ["chaos: failing disk"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scenario(primaries: int) -> dict[str, Any]:
    nodes = [{"name": f"n{i}", "group": "g1", "mtotal": 65536, "dtotal": 1024000}
             for i in range(1, 10)]
    for n in nodes:
        if n["name"] in FAILING:
            n["diagnose"] = EVACUATE
    instances = []
    # per failing node: N primaries (secondary on the next, healthy node) and
    # N/2 secondaries (primary on the previous, healthy node); no instance spans
    # two failing nodes, so every operation on it is needed exactly once
    for f in FAILING:
        k = int(f[1:])
        for j in range(1, primaries + 1):
            instances.append({"name": f"p{k}-{j}", "primary": f, "secondary": f"n{k + 1}",
                              "disk_template": "drbd", "memory": 1024, "disks": [10240]})
        for j in range(1, (primaries + 1) // 2 + 1):
            instances.append({"name": f"s{k}-{j}", "primary": f"n{k - 1}", "secondary": f,
                              "disk_template": "drbd", "memory": 1024, "disks": [10240]})
    return {"name": "chaos.example.com", "master": "n1", "groups": [{"name": "g1"}],
            "nodes": nodes, "instances": instances}


class Sim:
    def __init__(self, work: str, job_seconds: float, primaries: int) -> None:
        self.work = work
        self.port = free_port()
        self.mond_port = free_port()
        self.agent_port = free_port()
        self.hmac_key = os.path.join(work, "hmac.key")
        with open(self.hmac_key, "w") as f:
            f.write(base64.b16encode(os.urandom(20)).decode().lower() + "\n")
        os.chmod(self.hmac_key, 0o600)
        self.password = "chaos-" + base64.b32encode(os.urandom(10)).decode().lower()
        users = os.path.join(work, "users")
        with open(users, "w") as f:
            f.write(f"chaos {self.password} write\n")
        os.chmod(users, 0o600)
        self.password_file = os.path.join(work, "password")
        with open(self.password_file, "w") as f:
            f.write(self.password + "\n")
        os.chmod(self.password_file, 0o600)
        path = os.path.join(work, "scenario.json")
        with open(path, "w") as f:
            json.dump(scenario(primaries), f)
        self.log = open(os.path.join(work, "sim.log"), "wb")  # noqa: SIM115
        self.child = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "-l", "-", "ganeti-sim", "--scenario", path,
             "--plain-http", "--rapi-port", str(self.port), "--mond-port", str(self.mond_port),
             "--rapi-users", users, "--job-seconds", str(job_seconds),
             "--agent-port", str(self.agent_port), "--hmac-key", self.hmac_key,
             "--workdir", os.path.join(work, "simwork")],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        os.makedirs(os.path.join(work, "simwork"), exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        auth = base64.b64encode(f"chaos:{self.password}".encode()).decode()
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (127.0.0.1 only)
            return json.loads(r.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise SystemExit(f"simulator exited early; see {self.work}/sim.log")
            try:
                self.get("/2/info")
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("simulator did not answer within 60 s")

    def stop(self) -> None:
        self.child.terminate()
        try:
            self.child.wait(10)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()
        self.log.close()


def start_daemon(sim: Sim, state_dir: str, log: Any, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "-l", "-", "ganeti-maintd", "--rapi", sim.url,
         "--rapi-user", "chaos", "--rapi-password-file", sim.password_file,
         "--state-dir", state_dir, "--no-voting", "--yes-do-it", "--hostname", "n1",
         "--round-delay", "0.2", "--job-wait", "2", "--mond-port", str(sim.mond_port),
         "--mond-timeout", "2", "-p", str(port), "-b", "127.0.0.1",
         # the simulated nodes' signed agents (plain HTTP like the simulator's RAPI)
         "--agent-port", str(sim.agent_port), "--agent-plain-http", "--hmac-key", sim.hmac_key,
         # the three failing nodes are evacuated together: a budget of 3, and
         # three reports are not a storm here (the breaker trips above 3)
         "--max-evacuating", "3", "--storm-threshold", "3"],
        stdout=log, stderr=subprocess.STDOUT,
    )


def wait_listening(child: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)


def read_state(state_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(state_dir, "state.json")) as f:
            return json.load(f)  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def all_completed(state: dict[str, Any]) -> bool:
    incs = state.get("incidents", [])
    done = {i["node-name"] for i in incs if i["repair-status"] == "completed"}
    return done >= set(FAILING)


def verdict(sim: Sim, state: dict[str, Any]) -> dict[str, Any]:
    from maintd.decide.reason import job_reason

    jobs = sim.get("/2/jobs?bulk=1")
    ops: list[tuple[str, str]] = []
    not_ours = []
    for job in jobs:
        if job_reason(job["ops"]) is None:
            not_ours.append(job["id"])
        for op in job["ops"]:
            what = op.get("instance_name") or op.get("node_name") or ",".join(op.get("tags", []))
            ops.append((op["OP_ID"], str(what)))
    twice = sorted(f"{o} {w} x{n}" for (o, w), n in collections.Counter(ops).items() if n > 1)
    incidents = {i["uuid"]: (i["node-name"], i["repair-status"])
                 for i in state.get("incidents", [])}
    statuses = collections.Counter(j["status"] for j in jobs)
    return {
        "ok": not twice and not not_ours and all_completed(state)
        and len(incidents) == len(FAILING),
        "incidents": incidents,
        "jobs": len(jobs),
        "job_statuses": dict(statuses),
        "submitted_twice": twice,
        "jobs_without_reason": not_ours,
    }


def run(kills: int, seed: int, max_alive: float, job_seconds: float, primaries: int,
        work: str, say: Any = print) -> dict[str, Any]:
    rng = random.Random(seed)
    sim = Sim(work, job_seconds, primaries)
    during = 0
    state_dir = os.path.join(work, "state")
    log = open(os.path.join(work, "daemon.log"), "ab")  # noqa: SIM115
    started = time.monotonic()
    try:
        sim.wait_ready()
        for n in range(1, kills + 1):
            port = free_port()
            child = start_daemon(sim, state_dir, log, port)
            # one kill in five while the daemon starts up, the others at a
            # random moment of its rounds (its HTTP API listens just before
            # round 1 starts)
            early = rng.random() < 0.2
            alive = rng.uniform(0.0, 1.0 if early else max_alive)
            if not early:
                wait_listening(child, port)
            try:
                child.wait(alive)
                say(f"kill {n}: daemon exited by itself with {child.returncode}")
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                child.wait()
                if not all_completed(read_state(state_dir)):
                    during += 1
            if n % 10 == 0 or n == kills:
                st = read_state(state_dir)
                say(f"kill {n}/{kills} after {alive:.2f}s: " + ", ".join(
                    f"{i['node-name']} {i['repair-status']} jobs={len(i['jobs'])}"
                    for i in st.get("incidents", [])))
        say("final daemon: running until every incident is completed")
        child = start_daemon(sim, state_dir, log, free_port())
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline and not all_completed(read_state(state_dir)):
                if child.poll() is not None:
                    raise SystemExit(f"final daemon exited with {child.returncode}; see "
                                     f"{work}/daemon.log")
                time.sleep(0.2)
            # a last round's worth: nothing more may be submitted once completed
            time.sleep(1.0)
        finally:
            child.terminate()
            child.wait(30)
        result = verdict(sim, read_state(state_dir))
        result["kills"] = kills
        result["kills_during_evacuation"] = during
        result["seed"] = seed
        result["seconds"] = round(time.monotonic() - started, 1)
        return result
    finally:
        log.close()
        sim.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-alive", type=float, default=2.0,
                   help="a daemon lives a random 0..MAX seconds after it started "
                        "listening before SIGKILL")
    p.add_argument("--job-seconds", type=float, default=0.3)
    p.add_argument("--primaries", type=int, default=40,
                   help="primary instances per failing node (and half as many secondaries)")
    p.add_argument("--workdir", help="keep logs and state here (default: a temp dir, removed)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON only")
    args = p.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="maintd-chaos-")
    os.makedirs(work, exist_ok=True)
    say = (lambda text: None) if args.json else functools.partial(print, flush=True)
    try:
        result = run(args.kills, args.seed, args.max_alive, args.job_seconds, args.primaries,
                     work, say)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in sorted(result.items()):
            print(f"{key}: {value}")
        print("PASS" if result["ok"] else "FAIL")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
