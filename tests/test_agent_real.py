"""The node agent and the daemon on a REAL 3-node Ganeti 3.0 cluster.

``../shared/ganeti-sandbox/up-multi.sh`` (through :mod:`tests.sandbox_multi`)
brings up three real nodes.  On each node (its network namespace; the
node's own ``hmac.key`` and ``server.pem`` from ``/srv/ganeti-multi/nodeN/lib``)
runs ``twistd ganeti-maintd-agent`` over TLS with whitelist directories the
test makes (root-owned, 0755).  The daemon runs in the client namespace
against the real RAPI, pinned to the agents' real certificate, verifying
with the real HMAC key.  Checked:

- node2's whitelisted diagnose script reports ``evacuate``: the daemon drains
  node2, really migrates its instances away, tags it ``repairready`` and
  completes; node2 back to Ok and the tag removed, the incident is forgotten;
- node3 reports ``live-repair`` with a whitelisted repair command: it runs
  through the agent (it leaves a file with the report it got on stdin) and
  the incident completes;
- a report signed with a wrong key (a forged agent on node1) opens nothing
  and drains nothing; a replayed repair request runs nothing again.

Skips without root or the sandbox scripts; fails instead under
MAINTD_REQUIRE_REAL_GANETI=1.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import uuid
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from maintd.common import signing
from tests.sandbox_multi import NET, RAPI_CERT, RAPI_PASSWORD, RAPI_URL, RAPI_USER, MultiSandbox

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
AGENT_PORT = 1817
DAEMON_PORT = 18016
DEADLINE = 420.0


def wait_for(what: str, cond: Any, timeout: float = DEADLINE, log: str | None = None) -> Any:
    """Poll ``cond()`` until it returns something true (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = ""
            if log and os.path.exists(log):
                with open(log, errors="replace") as f:
                    tail = f.read()[-4000:]
            raise AssertionError(f"{what}: not reached within {timeout:.0f}s\n{tail}")
        time.sleep(1)


class RealClusterAgentTests(SynchronousTestCase):
    """One test: one cluster bring-up for the whole story."""

    def test_agent_on_a_real_cluster(self) -> None:
        with MultiSandbox(nodes=3, instances=6) as sb:
            self.sb = sb
            self.work = os.path.join("/srv/ganeti-multi", "maintd-test")
            os.makedirs(self.work, mode=0o755)
            self.story()

    # -- set-up --------------------------------------------------------------------

    def agent_dir(self, n: int) -> str:
        return os.path.join(self.sb.node_dir(n), "maintd-agent")

    def set_report(self, n: int, report: dict[str, Any]) -> None:
        path = os.path.join(self.agent_dir(n), "report.json")
        with open(path + ".tmp", "w") as f:
            json.dump(report, f)
        os.rename(path + ".tmp", path)

    def prepare_node(self, n: int) -> None:
        base = self.agent_dir(n)
        for sub in ("", "diagnose", "repair"):
            os.makedirs(os.path.join(base, sub), mode=0o755, exist_ok=True)
            os.chmod(os.path.join(base, sub), 0o755)
        self.set_report(n, {"status": "Ok"})
        diag = os.path.join(base, "diagnose", "node-health")
        with open(diag, "w") as f:
            f.write(f"#!/bin/sh\nexec cat {base}/report.json\n")
        os.chmod(diag, 0o755)
        fix = os.path.join(base, "repair", "fix-bmc")
        with open(fix, "w") as f:
            f.write(f"#!/bin/sh\ncat > {base}/repaired.json\necho \"$(hostname) fixed\"\n"
                    f"echo run >> {base}/runs\n")
        os.chmod(fix, 0o755)

    def start_agent(self, n: int, key: str | None = None) -> Any:
        lib = self.sb.node_lib(n)
        base = self.agent_dir(n)
        argv = [TWISTD, "-n", "--pidfile=", "ganeti-maintd-agent", "-p", str(AGENT_PORT),
                "-b", self.sb.node_ip(n), "--hmac-key", key or os.path.join(lib, "hmac.key"),
                "--ssl-cert", os.path.join(lib, "server.pem"),
                "--diagnose-command", "node-health",
                "--diagnose-dir", os.path.join(base, "diagnose"),
                "--repair-dir", os.path.join(base, "repair"),
                "--state-dir", os.path.join(base, "state"), "--diagnose-interval", "1",
                "--hostname", self.sb.node_name(n)]
        log = os.path.join(self.work, f"agent{n}.log")
        p = self.sb.spawn(n, argv, log)
        wait_for(f"agent on node{n} listening", lambda: "starting on 1817" in _read(log),
                 60, log)
        return p

    def start_daemon(self) -> Any:
        pw = os.path.join(self.work, "rapi.pw")
        with open(pw, "w") as f:
            f.write(RAPI_PASSWORD + "\n")
        os.chmod(pw, 0o600)
        lib = self.sb.node_lib(1)
        argv = [TWISTD, "-n", "--pidfile=", "ganeti-maintd", "-p", str(DAEMON_PORT),
                "-b", f"{NET}.254", "--no-voting", "--yes-do-it",
                "--rapi", RAPI_URL, "--rapi-user", RAPI_USER, "--rapi-password-file", pw,
                "--rapi-cert", RAPI_CERT, "--state-dir", os.path.join(self.work, "state"),
                "--hmac-key", os.path.join(lib, "hmac.key"),
                "--agent-cert", os.path.join(lib, "server.pem"),
                "--round-delay", "2", "--job-wait", "120", "--mond-timeout", "10"]
        self.daemon_log = os.path.join(self.work, "daemon.log")
        return self.sb.spawn(None, argv, self.daemon_log)

    # -- reading -------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        run = self.sb.client("curl", "-sf", f"http://{NET}.254:{DAEMON_PORT}/1/status",
                             check=False)
        if run.returncode != 0:
            return []
        return list(json.loads(run.stdout))

    def incident(self, node: str, state: str | None = None) -> dict[str, Any] | None:
        for inc in self.status():
            if inc["node-name"] == node and (state is None or inc["repair-status"] == state):
                return inc
        return None

    def node(self, name: str) -> dict[str, Any]:
        return dict(self.sb.rapi("GET", f"/2/nodes/{name}"))

    def primaries(self, name: str) -> list[str]:
        insts = self.sb.rapi("GET", "/2/instances?bulk=1")
        return sorted(i["name"] for i in insts if i["pnode"] == name)

    # -- the story -----------------------------------------------------------------

    def story(self) -> None:
        sb = self.sb
        n1, n2, n3 = (sb.node_name(i) for i in (1, 2, 3))
        for n in (1, 2, 3):
            self.prepare_node(n)
        agents = {n: self.start_agent(n) for n in (1, 2, 3)}
        on_n2 = self.primaries(n2)
        self.assertTrue(on_n2, "up-multi.sh puts instances on node2")

        # the agent's report, as the daemon sees it: signed with the real key
        key = signing.read_key(os.path.join(sb.node_lib(2), "hmac.key"))
        run = sb.client("curl", "-sf", "--cacert", os.path.join(sb.node_lib(1), "server.pem"),
                        "--resolve", f"ganeti.example.com:{AGENT_PORT}:{sb.node_ip(2)}",
                        f"https://ganeti.example.com:{AGENT_PORT}/1/report/node/diagnose")
        report, _ = signing.verify(json.loads(run.stdout), key, time.time(), source="node2")
        self.assertEqual(report["data"], {"status": "Ok"})

        # 1. node2 reports evacuate: drained, instances really migrated, tagged
        evacuate = {"status": "evacuate", "details": {"test": "psu"}}
        self.set_report(2, evacuate)
        self.start_daemon()
        inc = wait_for("node2's incident completed",
                       lambda: self.incident(n2, "completed"), log=self.daemon_log)
        self.assertEqual(inc["original"], evacuate)
        wait_for("node2 tagged (the tag job runs after the incident completes)",
                 lambda: f"maintd:repairready:{inc['uuid']}" in self.node(n2)["tags"],
                 120, self.daemon_log)
        self.assertTrue(self.node(n2)["drained"])
        self.assertEqual(self.primaries(n2), [], f"{on_n2} migrated away from node2")
        for name in on_n2:
            inst = sb.rapi("GET", f"/2/instances/{name}")
            self.assertIn(inst["pnode"], (n1, n3))

        # 2. node2 fine again, tag removed by the operator: forgotten
        self.set_report(2, {"status": "Ok"})
        job = sb.rapi("DELETE", f"/2/nodes/{n2}/tags?tag=maintd:repairready:{inc['uuid']}")
        self.assertEqual(sb.wait_job(job)["status"], "success")
        wait_for("node2's incident forgotten",
                 lambda: not any(i["uuid"] == inc["uuid"] for i in self.status()),
                 log=self.daemon_log)

        # 3. node3 asks for a live repair: run through its agent, completed
        repair = {"status": "live-repair", "command": "fix-bmc", "details": ["bmc"]}
        self.set_report(3, repair)
        inc3 = wait_for("node3's live repair completed",
                        lambda: self.incident(n3, "completed"), log=self.daemon_log)
        repaired = os.path.join(self.agent_dir(3), "repaired.json")
        with open(repaired) as f:
            self.assertEqual(json.load(f), repair, "the report on the command's stdin")
        self.assertEqual(_read(os.path.join(self.agent_dir(3), "runs")), "run\n")
        wait_for("node3 tagged", lambda: f"maintd:repairready:{inc3['uuid']}"
                 in self.node(n3)["tags"], 120, self.daemon_log)
        self.assertFalse(self.node(n3)["drained"], "a live repair drains nothing")

        # 4a. a replayed repair request runs nothing again
        body = signing.dumps({"node": n3, "incident": str(uuid.uuid4()), "command": "fix-bmc",
                              "report": repair, "nonce": secrets.token_hex(16),
                              "time": time.time()}, key, time.time())
        req = os.path.join(self.work, "request.json")
        with open(req, "wb") as f:
            f.write(body)

        def post() -> tuple[int, dict[str, Any]]:
            r = sb.client("curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                          "--cacert", os.path.join(sb.node_lib(1), "server.pem"),
                          "--resolve", f"ganeti.example.com:{AGENT_PORT}:{sb.node_ip(3)}",
                          "--data-binary", f"@{req}",
                          f"https://ganeti.example.com:{AGENT_PORT}/1/repair")
            text, code = r.stdout.rsplit("\n", 1)
            answer, _ = signing.verify(json.loads(text), key, time.time(), source="node3")
            return int(code), answer

        code, answer = post()
        self.assertEqual((code, answer["ok"]), (200, True))
        self.assertEqual(_read(os.path.join(self.agent_dir(3), "runs")), "run\nrun\n")
        code, answer = post()
        self.assertEqual(code, 403)
        self.assertIn("replayed", answer["error"])
        self.assertEqual(_read(os.path.join(self.agent_dir(3), "runs")), "run\nrun\n",
                         "the replay ran nothing")

        # 4b. a report signed with a wrong key: no incident, nothing drained
        sb.stop(agents[1])
        forged = os.path.join(self.work, "forged.key")
        with open(forged, "w") as f:
            f.write(secrets.token_hex(20) + "\n")
        self.set_report(1, {"status": "evacuate", "details": "forged"})
        self.start_agent(1, key=forged)
        wait_for("the daemon refuses node1's forged report",
                 lambda: "bad signature" in _read(self.daemon_log)
                 and n1 in _read(self.daemon_log).split("bad signature", 1)[1][:300],
                 120, self.daemon_log)
        rounds_seen = _read(self.daemon_log).count("round ")
        wait_for("two more rounds", lambda: _read(self.daemon_log).count("round ")
                 >= rounds_seen + 2, 120, self.daemon_log)
        self.assertIsNone(self.incident(n1), "a forged report opens no incident")
        self.assertFalse(self.node(n1)["drained"])
        self.assertNotIn("Traceback", _read(self.daemon_log))


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""
