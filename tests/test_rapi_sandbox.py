"""RapiClient against a REAL Ganeti 3.0 cluster (the shared RAPI sandbox).

``../shared/ganeti-sandbox/up.sh`` starts a single-node Ganeti 3.0 cluster
in network namespace ``gsb``; a script run inside it (``in-ns.sh``) with
this virtualenv's Python uses the real client to load the cluster, tag and
untag the master node, wait for those real jobs, check the reason trail,
read a failed job's error and check certificate pinning against the real
``/var/lib/ganeti/rapi.pem``.  The sandbox is started here when it is not
up (and stopped again afterwards only then); without root, or when it
cannot start, the tests skip (fail under MAINTD_REQUIRE_REAL_GANETI=1).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.tools import sandbox_dir, skip_or_fail

SANDBOX = sandbox_dir("up.sh")
#: Every worktree's test run (and trial -j worker) shares the one sandbox
#: (it takes over /var/lib/ganeti): whoever holds this lock owns it.
LOCK = "/run/lock/ganeti-maintd-rapi-sandbox.lock"
LOCK_WAIT = 900.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import json, os, sys, tempfile, uuid
from twisted.internet import task
from twisted.internet.defer import Deferred
from maintd.cluster.rapi.client import RapiClient
from maintd.cluster.rapi.errors import RapiAuthError, RapiTLSError
from tests.test_rapi_helpers import make_rapi_pem

URL = "https://127.0.0.1:5080"
CERT = "/var/lib/ganeti/rapi.pem"
out = {}

async def main(reactor):
    d = tempfile.mkdtemp()
    pw = os.path.join(d, "pw")
    with open(pw, "w") as f:
        f.write("maintd-sandbox\n")
    os.chmod(pw, 0o600)
    c = RapiClient.create(URL, reactor=reactor, user="maintd", password_file=pw, cert=CERT)
    try:
        out["version"] = await c.version()
        out["features"] = await c.features()
        cluster = await c.load_cluster()
        out["cluster"] = {
            "name": cluster.name, "master": cluster.master,
            "nodes": sorted(cluster.nodes), "instances": sorted(cluster.instances),
            "skipped": list(cluster.skipped),
            "master_flag": cluster.nodes[cluster.master].master,
            "primaries": len(cluster.nodes[cluster.master].primaries),
            "hypervisors": sorted({i.hypervisor for i in cluster.instances.values()}),
        }
        master = cluster.master
        tag = "maintd:sandbox:" + uuid.uuid4().hex[:8]
        reason = "maintd sandbox-test " + tag
        job = await c.add_tags("node", master, [tag], reason)
        res = await c.wait_jobs([job], timeout=120)
        out["add"] = [res[job].status, res[job].error]
        out["tags_after_add"] = tag in await c.tags("node", master)
        raw = await c._get(f"/2/jobs/{job}")
        out["reason_trail"] = raw["ops"][0]["reason"]
        out["long_poll"] = await c.wait_job_change(job, ["status"], None, None)
        job = await c.remove_tags("node", master, [tag], reason)
        res = await c.wait_jobs([job], timeout=120)
        out["remove"] = [res[job].status, res[job].error]
        out["tags_after_remove"] = tag in await c.tags("node", master)
        job = await c.set_node_drained(master, True, "maintd sandbox-test")
        res = await c.wait_jobs([job], timeout=120)
        out["drain_master"] = [res[job].status, res[job].error]
        out["lost"] = (await c.get_job(987654)).status
        # every other write: rlib2 must accept its shape (a job id, no 400);
        # the jobs themselves may fail on this one-node cluster
        R = "maintd sandbox-test writes"
        jobs = {
            "migrate": await c.migrate_instance("inst5.sandbox.test", reason=R),
            "failover": await c.failover_instance(
                "inst4.sandbox.test", ignore_consistency=True, reason=R),
            "replace": await c.replace_disks("inst5.sandbox.test", remote_node=master, reason=R),
            "recreate": await c.recreate_disks("inst2.sandbox.test", nodes=[master], reason=R),
            "reinstall": await c.reinstall_instance("inst3.sandbox.test", os="noop", reason=R),
            "startup": await c.startup_instance("inst2.sandbox.test", reason=R),
            "evacuate": await c.evacuate_node(
                master, mode="primary-only", iallocator="hail", reason=R),
            "undrain": await c.set_node_drained(master, False, R),
        }
        res = await c.wait_jobs(list(jobs.values()), timeout=300)
        out["writes"] = {k: [res[j].status, res[j].error] for k, j in jobs.items()}
        raw = await c._get(f"/2/jobs/{jobs['migrate']}")
        out["migrate_op"] = raw["ops"][0]
    finally:
        await c.close()
    other = os.path.join(d, "other.pem")
    make_rapi_pem(other)
    c2 = RapiClient.create(URL, reactor=reactor, user="maintd", password_file=pw, cert=other)
    try:
        await c2.version()
        out["other_cert"] = "accepted"
    except RapiTLSError as e:
        out["other_cert"] = "rejected: " + str(e)
    finally:
        await c2.close()
    with open(pw, "w") as f:
        f.write("wrong\n")
    c3 = RapiClient.create(URL, reactor=reactor, user="maintd", password_file=pw, cert=CERT)
    try:
        await c3.info()
        out["bad_password"] = "accepted"
    except RapiAuthError as e:
        out["bad_password"] = "auth error: " + str(e)
    finally:
        await c3.close()

    print(json.dumps(out))

task.react(lambda r: Deferred.fromCoroutine(main(r)))
'''


def _system_env() -> dict[str, str]:
    """This environment minus Python path settings: Ganeti's own tools run on
    the system Python and must not import this virtualenv's packages (trial
    -j workers set PYTHONPATH to the parent's sys.path)."""
    return {
        k: v for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }


@contextmanager
def _sandbox_lock() -> Iterator[bool]:
    """Hold the sandbox lock (True), or give up after LOCK_WAIT seconds (False)."""
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "a") as f:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(1)  # another test run owns the sandbox
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _rapi_ready(tries: int = 30) -> bool:
    """An authenticated RAPI read succeeds inside the namespace (bounded wait)."""
    for i in range(tries):
        check = subprocess.run(
            [os.path.join(SANDBOX, "in-ns.sh"), "curl", "-skf", "-o", "/dev/null",
             "-u", "maintd:maintd-sandbox", "https://127.0.0.1:5080/2/info"],
            capture_output=True, env=_system_env(),
        )
        if check.returncode == 0:
            return True
        if i + 1 < tries:
            time.sleep(1)
    return False


def _fingerprint() -> tuple[int, int] | None:
    """Identity of the running sandbox cluster (its server.pem, written once
    by ``gnt-cluster init``), to notice a restart by someone else."""
    try:
        st = os.stat("/var/lib/ganeti/server.pem")
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _sandbox_up() -> bool:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return "gsb" in ns.stdout and os.path.exists("/var/lib/ganeti/config.data")


class RealGanetiTests(SynchronousTestCase):
    """One test: trial has no setUpClass, and under ``trial -j`` separate
    tests could run in separate workers, each trying to own the sandbox."""

    def down(self) -> None:
        subprocess.run([os.path.join(SANDBOX, "down.sh")], capture_output=True, timeout=300,
                       env=_system_env())

    def run_in_sandbox(self) -> dict[str, Any]:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(SCRIPT)
        try:
            run = subprocess.run(
                [os.path.join(SANDBOX, "in-ns.sh"), sys.executable, f.name],
                capture_output=True, text=True, timeout=600, cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=ROOT),
            )
        finally:
            os.unlink(f.name)
        output = run.stdout + run.stderr
        self.assertEqual(run.returncode, 0, f"sandbox script failed: {output[-3000:]}")
        result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
        return result

    def test_real_ganeti(self) -> None:
        if os.geteuid() != 0:
            skip_or_fail("RAPI sandbox needs root (ip netns, Ganeti daemons)")
        if not os.path.exists(os.path.join(SANDBOX, "up.sh")):
            skip_or_fail(f"RAPI sandbox scripts not found in {SANDBOX}")
        with _sandbox_lock() as locked:
            if not locked:
                skip_or_fail(f"RAPI sandbox busy: {LOCK} held for over {LOCK_WAIT:.0f}s")
            r = self.with_sandbox()
        self.check(r)

    def with_sandbox(self) -> dict[str, Any]:
        started = False
        if not _sandbox_up():
            existed = os.path.exists("/var/lib/ganeti/config.data")
            up = subprocess.run(
                [os.path.join(SANDBOX, "up.sh"), "6"], capture_output=True, text=True,
                timeout=900, env=_system_env(),
            )
            if up.returncode != 0:
                if not existed:  # clean up what the failed start left behind
                    self.down()
                skip_or_fail(f"RAPI sandbox did not start: {(up.stderr or up.stdout)[-500:]}")
            started = True
        try:
            if not _rapi_ready():
                skip_or_fail("RAPI sandbox is up but its RAPI does not accept maintd's login")
            before = _fingerprint()
            try:
                return self.run_in_sandbox()
            except AssertionError:
                if _fingerprint() != before or not _sandbox_up():
                    skip_or_fail(
                        "the RAPI sandbox was stopped or restarted by another process during "
                        "the test (a test run without the sandbox lock?)"
                    )
                raise
        finally:
            if started:
                self.down()

    def check(self, r: dict[str, Any]) -> None:
        # reads and the model
        self.assertEqual(r["version"], 2)
        self.assertIn("node-evac-res1", r["features"])
        c = r["cluster"]
        self.assertEqual(c["name"], "cluster.sandbox.test")
        self.assertEqual(c["nodes"], ["node1.sandbox.test"])
        self.assertEqual(len(c["instances"]), 6)
        self.assertEqual(c["skipped"], [])
        self.assertTrue(c["master_flag"])
        self.assertEqual(c["primaries"], 6)
        self.assertEqual(c["hypervisors"], ["fake"])
        # tag jobs, waited for, with our reason in Ganeti's reason trail
        self.assertEqual(r["add"], ["success", ""])
        self.assertTrue(r["tags_after_add"])
        self.assertEqual(r["remove"], ["success", ""])
        self.assertFalse(r["tags_after_remove"])
        trail = r["reason_trail"]
        self.assertEqual(trail[0][0], "gnt:user")
        self.assertTrue(trail[0][1].startswith("maintd sandbox-test maintd:sandbox:"), trail)
        self.assertEqual(trail[1][0], "gnt:library:rlib2:nodes_name_tags")
        # long poll of a finished job
        self.assertEqual(r["long_poll"]["job_info"], ["success"])
        # a real failed job's error text; an unknown job is lost
        status, error = r["drain_master"]
        self.assertEqual(status, "error")
        self.assertIn("master-failover", error)
        self.assertEqual(r["lost"], "lost")
        # pinning against the real rapi.pem; bad password
        self.assertTrue(r["other_cert"].startswith("rejected"), r["other_cert"])
        self.assertTrue(r["bad_password"].startswith("auth error"), r["bad_password"])
        # every write was accepted by rlib2 (job id, opcode built) and its job
        # ran to a final state; failures are the cluster's, not the request's
        writes = r["writes"]
        self.assertEqual(len(writes), 8)
        for name, (status, error) in writes.items():
            self.assertIn(status, ("success", "error"), name)
            self.assertNotIn("Invalid body parameters", error, name)
            if status == "error":
                self.assertTrue(error.startswith(("OpPrereqError", "OpExecError")), (name, error))
        self.assertEqual(writes["startup"], ["success", ""])
        self.assertEqual(writes["reinstall"], ["success", ""])
        op = r["migrate_op"]
        self.assertEqual((op["OP_ID"], op["mode"], op["allow_failover"]),
                         ("OP_INSTANCE_MIGRATE", "live", False))
        self.assertEqual(op["reason"][0][:2], ["gnt:user", "maintd sandbox-test writes"])
