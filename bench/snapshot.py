"""Benchmark: load a 1,000-node / 20,000-instance cluster snapshot over RAPI.

    python bench/snapshot.py [--nodes N] [--instances M] [--repeat K]

A separate server process serves the cluster over HTTPS with basic auth on
127.0.0.1: ``--server sim`` (default) is the simulator (maintd.sim, RAPI
only, no monds) started from a snapshot of the generated cluster;
``--server static`` serves pre-generated bulk answers shaped like a real
Ganeti 3.0 cluster's (every field of the real samples in tests/data/rapi).
A fresh process loads the snapshot with the real client (pinned
certificate, parallel bulk reads, loader) and prints the wall and CPU time
of each load and its own peak RSS.  Targets: < 2 s and < 150 MB.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SAMPLES = os.path.join(ROOT, "tests", "data", "rapi")


def _sample(name: str):  # type: ignore[no-untyped-def]
    with open(os.path.join(SAMPLES, name)) as f:
        return json.load(f)


def generate(n_nodes: int, n_inst: int, n_groups: int = 10) -> dict[str, bytes]:
    """Bulk answers for a cluster of the given size (JSON bytes per path)."""
    info = _sample("info.json")
    g0 = _sample("groups-bulk.json")[0]
    n0 = _sample("nodes-bulk.json")[0]
    i_tpl = _sample("instances-bulk.json")
    groups = []
    for g in range(n_groups):
        grp = copy.deepcopy(g0)
        grp.update(name=f"group{g:02d}", uuid=f"00000000-0000-0000-0000-{g:012d}", node_list=[])
        groups.append(grp)
    nodes = []
    for n in range(n_nodes):
        node = copy.deepcopy(n0)
        grp = groups[n % n_groups]
        node.update(
            name=f"node{n:04d}.example.com",
            uuid=f"10000000-0000-0000-0000-{n:012d}",
            pip=f"198.18.{n // 250}.{n % 250 + 1}",
            sip=f"198.19.{n // 250}.{n % 250 + 1}",
            role="M" if n == 0 else ("C" if n < 10 else "R"),
            master_candidate=n < 10,
            pinst_list=[],
            sinst_list=[],
            mtotal=262144,
            mfree=131072,
            dtotal=4194304,
            dfree=2097152,
            ctotal=64,
            cnos=64,
        )
        node["group.uuid"] = grp["uuid"]
        grp["node_list"].append(node["name"])
        nodes.append(node)
    instances = []
    for i in range(n_inst):
        inst = copy.deepcopy(i_tpl[i % len(i_tpl)])
        g = i % n_groups
        members = groups[g]["node_list"]
        k = (i // n_groups) % len(members)
        pnode = members[k]
        drbd = i % 3 != 0
        snode = members[(k + 1) % len(members)]
        inst.update(
            name=f"inst{i:05d}.example.com",
            uuid=f"20000000-0000-0000-0000-{i:012d}",
            pnode=pnode,
            snodes=[snode] if drbd else [],
            disk_template="drbd" if drbd else "plain",
            tags=[f"service:{i % 17}"],
        )
        inst["disk.sizes"] = [10240, 20480]
        inst["disk.spindles"] = [None, None]
        inst["disk.uuids"] = [f"3000{i:08d}-a", f"3000{i:08d}-b"]
        inst["disk.names"] = [None, None]
        inst["nic.macs"] = [f"aa:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"]
        inst["nic.ips"] = [None]
        inst["nic.modes"] = ["bridged"]
        inst["nic.links"] = ["br0"]
        inst["nic.uuids"] = [f"4000{i:08d}"]
        inst["nic.names"] = [None]
        inst["nic.networks"] = [None]
        inst["nic.networks.names"] = [None]
        inst["nic.bridges"] = ["br0"]
        instances.append(inst)
        nodes[int(pnode[4:8])]["pinst_list"].append(inst["name"])
        if drbd:
            nodes[int(snode[4:8])]["sinst_list"].append(inst["name"])
    for node in nodes:
        node["pinst_cnt"] = len(node["pinst_list"])
        node["sinst_cnt"] = len(node["sinst_list"])
    for grp in groups:
        grp["node_cnt"] = len(grp["node_list"])
    info["master"] = nodes[0]["name"]
    return {
        "/2/info": json.dumps(info).encode(),
        "/2/groups": json.dumps(groups).encode(),
        "/2/nodes": json.dumps(nodes).encode(),
        "/2/instances": json.dumps(instances).encode(),
    }


def serve_sim(workdir: str, n_nodes: int, n_inst: int) -> None:
    """Server process: the simulator running the generated cluster."""
    from twisted.internet import reactor

    from maintd.cluster import model
    from maintd.cluster.rapi.loader import build_cluster
    from maintd.sim.embed import EmbeddedSimulator

    bodies = generate(n_nodes, n_inst)
    cluster = build_cluster(*(json.loads(bodies[p]) for p in
                              ("/2/info", "/2/groups", "/2/nodes", "/2/instances")))
    del bodies
    snap = os.path.join(workdir, "cluster.json")
    with open(snap, "w") as f:
        json.dump(model.to_json(cluster), f)
    del cluster
    sim = EmbeddedSimulator(reactor, os.path.join(workdir, "sim"), scenario=snap, mond=False)
    sim.startService()
    print(json.dumps({"url": sim.rapi_url, "user": sim.rapi_user,
                      "password_file": sim.rapi_password_file, "cert": sim.rapi_cert}),
          flush=True)
    _run_until_stdin_closes(reactor)


def _run_until_stdin_closes(reactor) -> None:  # type: ignore[no-untyped-def]
    from twisted.internet import stdio
    from twisted.internet.protocol import Protocol

    class Watch(Protocol):
        def connectionLost(self, reason):  # type: ignore[no-untyped-def]
            reactor.stop()

    stdio.StandardIO(Watch())
    reactor.run()


def serve(workdir: str, n_nodes: int, n_inst: int) -> None:
    """Server process: generate, listen on 127.0.0.1:0, print the port."""
    from twisted.internet import reactor, ssl
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from tests.test_rapi_helpers import make_rapi_pem

    bodies = generate(n_nodes, n_inst)
    pem = os.path.join(workdir, "rapi.pem")
    make_rapi_pem(pem)

    class Static(Resource):
        isLeaf = True

        def render_GET(self, request):  # type: ignore[no-untyped-def]
            body = bodies.get(request.path.decode())
            if body is None:
                request.setResponseCode(404)
                return b'{"code": 404, "message": "Not Found", "explain": ""}'
            request.setHeader(b"content-type", b"application/json")
            return body

    with open(pem) as f:
        options = ssl.PrivateCertificate.loadPEM(f.read()).options()
    port = reactor.listenSSL(0, Site(Static()), options, interface="127.0.0.1")
    pw = os.path.join(workdir, "password")
    with open(pw, "w") as f:
        f.write("bench\n")
    os.chmod(pw, 0o600)
    print(json.dumps({"url": f"https://127.0.0.1:{port.getHost().port}", "user": "bench",
                      "password_file": pw, "cert": pem}), flush=True)
    _run_until_stdin_closes(reactor)


def load(server: dict[str, str], repeat: int) -> list[tuple[float, float, int, int]]:
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    from maintd.cluster.rapi.client import RapiClient

    results: list[tuple[float, float, int, int]] = []

    async def run(reactor) -> None:  # type: ignore[no-untyped-def]
        client = RapiClient.create(
            server["url"], reactor=reactor, user=server["user"],
            password_file=server["password_file"], cert=server["cert"], timeout=60,
        )
        try:
            for _ in range(repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                cluster = await client.load_cluster()
                results.append(
                    (time.perf_counter() - t0, time.process_time() - c0,
                     len(cluster.nodes), len(cluster.instances))
                )
                del cluster
        finally:
            await client.close()

    task.react(lambda r: Deferred.fromCoroutine(run(r)))  # exits the process
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--instances", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--server", choices=("sim", "static"), default="sim")
    p.add_argument("--serve", metavar="WORKDIR")
    p.add_argument("--load", metavar="SERVER_JSON")
    a = p.parse_args()
    if a.serve:
        (serve_sim if a.server == "sim" else serve)(a.serve, a.nodes, a.instances)
        return
    if a.load:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        from twisted.internet import task

        real_react = task.react
        out: list[tuple[float, float, int, int]] = []

        def react(main, argv=()):  # type: ignore[no-untyped-def]
            try:
                real_react(main, argv)
            except SystemExit:
                pass

        task.react = react  # type: ignore[assignment]
        out = load(json.loads(a.load), a.repeat)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"times": [t for t, _, _, _ in out], "cpu": [c for _, c, _, _ in out],
                          "nodes": out[-1][2], "instances": out[-1][3],
                          "rss_start_kb": rss0, "rss_peak_kb": peak}))
        return
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", workdir, "--server", a.server,
             "--nodes", str(a.nodes), "--instances", str(a.instances)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        )
        try:
            assert server.stdout is not None
            hello = server.stdout.readline().decode()
            # a fresh process, so its peak RSS is the loading's alone
            res = subprocess.run(
                [sys.executable, __file__, "--load", hello, "--repeat", str(a.repeat)],
                capture_output=True, cwd=ROOT, timeout=600,
            )
            if res.returncode != 0:
                sys.exit(f"loading process failed ({res.returncode}):\n"
                         + res.stderr.decode(errors="replace")[-3000:])
            doc = json.loads(res.stdout.decode().strip().splitlines()[-1])
        finally:
            if server.stdin:
                server.stdin.close()
            server.wait(timeout=30)
    times = ", ".join(f"{t:.2f}" for t in doc["times"])
    print(f"snapshot bench ({a.server} server): {doc['nodes']} nodes, "
          f"{doc['instances']} instances over HTTPS")
    cpu = ", ".join(f"{t:.2f}" for t in doc["cpu"])
    print(f"  load_cluster wall time: {times} s (best {min(doc['times']):.2f} s; target < 2 s)")
    print(f"  CPU time of the loading process per load: {cpu} s "
          f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"  loader process peak RSS: {doc['rss_peak_kb'] / 1024:.0f} MB "
          f"(target < 150 MB)")


if __name__ == "__main__":
    main()
