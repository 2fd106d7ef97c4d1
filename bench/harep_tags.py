"""Figures: tag jobs per harep repair, on the simulated cluster, end to end.

Runs the daemon's jobs, snapshot and harep steps against the in-process
simulator (real RAPI over 127.0.0.1, jobs taking 0.05 s) on a cluster with
two offline nodes and 13 broken instances opted in to every repair type,
round after round until nothing is left to do, and counts the repairs
maintd started and the instance tag jobs (OP_TAGS_SET / OP_TAGS_DEL) in
Ganeti's job queue.  Runs against whatever ``maintd`` is on ``sys.path``
first, so the same script measures an older checkout too
(``PYTHONPATH=<checkout> python bench/harep_tags.py``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, task

P = "ganeti:watcher:autorepair:"


def scenario_doc() -> dict[str, Any]:
    nodes = [{"name": f"n{i}", "group": "g1"} for i in range(1, 13)]
    for n in nodes:
        if n["name"] in ("n2", "n3"):
            n["offline"] = True
    insts: list[dict[str, Any]] = []
    # 5 DRBD on offline primary n2 (failover, then fix-storage)
    insts += [
        {"name": f"fo{i}", "primary": "n2", "secondary": f"n{4 + i}", "disk_template": "drbd"}
        for i in range(5)
    ]
    # 4 DRBD with offline secondary n3 (fix-storage)
    insts += [
        {"name": f"fs{i}", "primary": f"n{9 + i}", "secondary": "n3", "disk_template": "drbd"}
        for i in range(4)
    ]
    # 1 DRBD on both offline nodes, 3 plain on n2 (reinstall)
    insts.append({"name": "both", "primary": "n2", "secondary": "n3", "disk_template": "drbd"})
    insts += [{"name": f"pl{i}", "primary": "n2", "disk_template": "plain"} for i in range(3)]
    return {
        "name": "harep-tags.sim.test",
        "master": "n1",
        "tags": [P + "reinstall"],
        "groups": [{"name": "g1"}],
        "nodes": nodes,
        "instances": insts,
    }


async def measure(reactor: Any) -> None:
    from maintd.cluster.rapi.client import RapiClient
    from maintd.daemon.config import DaemonConfig
    from maintd.daemon.round import RoundContext, run_round
    from maintd.daemon.state import MaintState
    from maintd.daemon.steps.harep import harep_step
    from maintd.daemon.steps.jobs import jobs_step
    from maintd.daemon.steps.snapshot import snapshot_step
    from maintd.sim import scenario as scenario_mod
    from maintd.sim.embed import EmbeddedSimulator

    work = tempfile.mkdtemp(prefix="maintd-bench-harep-")
    scen = scenario_mod.from_scenario(scenario_doc(), "bench")
    sim = EmbeddedSimulator(reactor, work + "/sim", loaded=scen, job_seconds=0.05, mond=False)
    sim.startService()
    rapi = RapiClient.create(
        sim.rapi_url,
        reactor=reactor,
        user=sim.rapi_user,
        password_file=sim.rapi_password_file,
        cert=sim.rapi_cert,
    )
    config = DaemonConfig.for_tests(state_dir=work + "/state", job_wait=30.0)
    state = MaintState()
    repairs = 0
    quiet = 0
    rounds = 0
    started = time.monotonic()
    while quiet < 2 and rounds < 30:
        rounds += 1
        ctx = RoundContext(
            number=rounds, now=time.time(), config=config, reactor=reactor, state=state, rapi=rapi
        )
        await run_round(ctx, [jobs_step, snapshot_step, harep_step])
        state = ctx.state
        if state.jobs:
            await rapi.wait_jobs(list(state.jobs), timeout=30.0)
        notes = [n for n in ctx.notes if n.get("step") == "harep"]
        repairs += sum(1 for n in notes if n.get("harep") == "repair")
        busy = [n for n in notes if n.get("harep") in ("repair", "continue", "finished", "waiting")]
        quiet = 0 if busy else quiet + 1
    queue = await rapi._get("/2/jobs", [("bulk", "1")])
    tag_jobs = sum(
        1
        for job in queue
        if job["ops"][0]["OP_ID"] in ("OP_TAGS_SET", "OP_TAGS_DEL")
        and job["ops"][0].get("kind") == "instance"
    )
    other = len(queue) - tag_jobs
    print(
        f"{repairs} repairs, {tag_jobs} instance tag jobs ({tag_jobs / max(repairs, 1):.2f} per"
        f" repair), {other} other jobs, {rounds} rounds, {time.monotonic() - started:.1f} s"
        f" (maintd from {sys.modules['maintd'].__file__})"
    )
    await rapi.close()
    await sim.stopService()


def main() -> None:
    task.react(lambda reactor: defer.ensureDeferred(measure(reactor)))


if __name__ == "__main__":
    main()
