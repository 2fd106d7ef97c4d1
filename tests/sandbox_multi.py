"""Helper for tests that use the REAL multi-node Ganeti 3.0 sandbox.

``../shared/ganeti-sandbox/up-multi.sh [NODES] [INSTANCES]`` (root) brings up
a real Ganeti 3.0 cluster: node N is network namespace ``gsbmN``
(198.18.1.N, ``nodeN.sandbox.test``) with its own mount and UTS namespace;
clients run in netns ``gsbm`` (198.18.1.254) where RAPI is
``https://198.18.1.100:5080`` (maintd / maintd-sandbox, certificate
``/srv/ganeti-multi/node1/lib/rapi.pem``); ``down-multi.sh`` removes it.
There is ONE such sandbox per machine: every user holds an exclusive flock on
:data:`LOCK` for as long as the cluster is up.

Use it either as a context manager::

    with MultiSandbox(nodes=3, instances=6) as sb:   # lock, up
        sb.client("curl", ...)                       # in the client netns
    # torn down (always), lock released

or through :class:`MultiSandboxTestCase`, which brings the cluster up once
per test class (in the first test that runs) and tears it down after the
class's last test, or at the latest when the test process exits (a class
whose tests are only partly selected, or split over ``trial -j`` workers).
Where the sandbox cannot run (not root, scripts missing, the start fails,
the lock stays busy) the test skips with a clear message, and fails instead
under ``MAINTD_REQUIRE_REAL_GANETI=1``.

Where code runs:

* :meth:`MultiSandbox.node` (``in-node.sh``) enters node N's network, mount
  and UTS namespaces: the node's own ``/var/lib/ganeti``, ``/etc/ganeti``,
  hostname; but ``/root`` there is private, so this virtualenv's Python
  (under ``/root/.pyenv``) is invisible: use it for Ganeti's own commands.
* :meth:`MultiSandbox.netns` (``ip netns exec gsbmN``) enters only node N's
  network namespace: the machine's files, this virtualenv and ``/work`` are
  visible; the node's own files are read from :meth:`node_lib`
  (``/srv/ganeti-multi/nodeN/lib``: ``hmac.key``, ``server.pem``, ...).
  Use it to run our agent "on" node N.
* :meth:`MultiSandbox.client` (``in-ns-multi.sh``) runs in the client netns
  (the daemon under test, curl).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.tools import sandbox_dir, skip_or_fail

SANDBOX = sandbox_dir("up-multi.sh")
LOCK = "/tmp/maintd-sandbox-multi.lock"
#: How long to wait for another test run that owns the sandbox (seconds).
LOCK_WAIT = float(os.environ.get("MAINTD_SANDBOX_MULTI_WAIT", "1200"))
ROOT_DIR = "/srv/ganeti-multi"
NET = "198.18.1"
DOMAIN = "sandbox.test"
RAPI_URL = f"https://{NET}.100:5080"
RAPI_USER = "maintd"
RAPI_PASSWORD = "maintd-sandbox"
RAPI_CERT = f"{ROOT_DIR}/node1/lib/rapi.pem"
CLIENT_NS = "gsbm"
#: The subject of Ganeti's self-signed rapi.pem and server.pem.
CERT_CN = "ganeti.example.com"
#: Repository root (importable from ``ip netns exec`` and the client netns).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("up-multi.sh", "down-multi.sh", "in-node.sh", "in-ns-multi.sh")


def system_env() -> dict[str, str]:
    """This environment minus Python path settings: Ganeti's tools run on the
    system Python and must not import this virtualenv's packages (trial -j
    workers set PYTHONPATH)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def venv_env() -> dict[str, str]:
    """Environment for this virtualenv's Python running our code (the repo
    importable, output unbuffered)."""
    return dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")


def check_can_run() -> None:
    """Skip (or fail under MAINTD_REQUIRE_REAL_GANETI=1) where the sandbox
    cannot run at all."""
    if os.geteuid() != 0:
        skip_or_fail("the multi-node Ganeti sandbox needs root (ip netns, Ganeti daemons)")
    missing = [s for s in SCRIPTS if not os.access(os.path.join(SANDBOX, s), os.X_OK)]
    if missing:
        skip_or_fail(f"multi-node sandbox scripts missing in {SANDBOX}: {', '.join(missing)}")
    for tool in ("/usr/bin/nsenter", "/usr/bin/flock"):
        if not os.path.exists(tool) and not os.path.exists("/bin/" + os.path.basename(tool)):
            skip_or_fail(f"{os.path.basename(tool)} not installed (util-linux)")
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        skip_or_fail("'ip netns' does not work here (iproute2 missing or no CAP_SYS_ADMIN)")


class MultiSandbox:
    """One real multi-node cluster: the lock, bring-up, tear-down, and
    running commands on its nodes and in its client namespace."""

    def __init__(self, nodes: int = 3, instances: int = 6,
                 templates: str | None = None) -> None:
        self.nodes = nodes
        self.instances = instances
        self.templates = templates
        self._lock: IO[str] | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self.up_output = ""

    # -- names ---------------------------------------------------------------------

    @staticmethod
    def node_name(n: int) -> str:
        return f"node{n}.{DOMAIN}"

    @staticmethod
    def node_ip(n: int) -> str:
        return f"{NET}.{n}"

    @staticmethod
    def node_ns(n: int) -> str:
        return f"gsbm{n}"

    @staticmethod
    def node_dir(n: int) -> str:
        """``/srv/ganeti-multi/nodeN``: the node's private files from outside."""
        return f"{ROOT_DIR}/node{n}"

    @classmethod
    def node_lib(cls, n: int) -> str:
        """The node's ``/var/lib/ganeti`` seen from outside (hmac.key, server.pem)."""
        return f"{cls.node_dir(n)}/lib"

    # -- life cycle ------------------------------------------------------------------

    def __enter__(self) -> MultiSandbox:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def is_up(self) -> bool:
        return self._lock is not None

    def up(self) -> None:
        """Take the lock, remove a leftover sandbox, bring the cluster up.
        Skips/fails (after releasing everything) when that cannot be done."""
        check_can_run()
        self._acquire()
        try:
            if os.path.exists(ROOT_DIR) or self._namespaces():
                # we hold the lock, so nobody uses it: a leftover of a dead run
                self._down_script()
            env = system_env()
            if self.templates:
                env["TEMPLATES"] = self.templates
            run = subprocess.run(
                [os.path.join(SANDBOX, "up-multi.sh"), str(self.nodes), str(self.instances)],
                capture_output=True, text=True, timeout=900, env=env,
            )
            self.up_output = run.stdout + run.stderr
            if run.returncode != 0:
                raise _StartFailed(
                    f"multi-node sandbox did not start (exit {run.returncode}): "
                    f"{self.up_output.strip()[-800:]}")
        except BaseException as e:
            self.down()
            if isinstance(e, _StartFailed):
                skip_or_fail(str(e))
            raise

    def down(self) -> None:
        """Stop what we started, tear the cluster down, release the lock.
        Safe to call more than once."""
        if self._lock is None:
            return
        try:
            for p in self._procs:
                self._stop(p)
            self._procs.clear()
            self._down_script()
        finally:
            lock, self._lock = self._lock, None
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def _acquire(self) -> None:
        f = open(LOCK, "a")  # noqa: SIM115 - held until down()
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.close()
                    skip_or_fail(f"multi-node sandbox busy: {LOCK} held by another "
                                 f"process for over {LOCK_WAIT:.0f}s")
                time.sleep(1)  # another test run owns the sandbox
        self._lock = f

    @staticmethod
    def _namespaces() -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        names = [line.split()[0] for line in out.splitlines() if line.split()]
        return [n for n in names if re.fullmatch(CLIENT_NS + r"[0-9]*", n)]

    @staticmethod
    def _down_script() -> None:
        subprocess.run([os.path.join(SANDBOX, "down-multi.sh")], capture_output=True,
                       timeout=300, env=system_env())

    # -- running commands --------------------------------------------------------------

    def node(self, n: int, *cmd: str, timeout: float = 300, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on node N in all its namespaces (``in-node.sh``), with
        the system environment (Ganeti's commands: gnt-*, daemon-util)."""
        return self._run([os.path.join(SANDBOX, "in-node.sh"), str(n), *cmd],
                         system_env(), timeout, check, input)

    def netns(self, n: int, *cmd: str, timeout: float = 300, check: bool = True,
              env: dict[str, str] | None = None,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in node N's network namespace only (``ip netns exec``):
        this virtualenv and /work are visible, the node's files are under
        :meth:`node_lib`."""
        return self._run(["ip", "netns", "exec", self.node_ns(n), *cmd],
                         env if env is not None else venv_env(), timeout, check, input)

    def client(self, *cmd: str, timeout: float = 300, check: bool = True,
               env: dict[str, str] | None = None,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the client netns (``in-ns-multi.sh``)."""
        return self._run([os.path.join(SANDBOX, "in-ns-multi.sh"), *cmd],
                         env if env is not None else venv_env(), timeout, check, input)

    def python(self, where: int | None, code: str, *args: str,
               timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` with this virtualenv in node N's netns (or the
        client netns for ``where=None``), repo importable."""
        argv = (sys.executable, "-c", code, *args)
        if where is None:
            return self.client(*argv, timeout=timeout, check=check)
        return self.netns(where, *argv, timeout=timeout, check=check)

    def spawn(self, where: int | None, argv: list[str], log: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running process (an agent, the daemon) in node N's
        netns (``where=None``: the client netns), output to ``log``.  It runs
        in its own process group, stopped by :meth:`stop` or :meth:`down`."""
        ns = CLIENT_NS if where is None else self.node_ns(where)
        with open(log, "ab") as out:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env if env is not None else venv_env(), cwd=REPO,
                                 start_new_session=True)
        self._procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        """Stop one process started by :meth:`spawn` (its whole group)."""
        self._stop(p)
        if p in self._procs:
            self._procs.remove(p)

    @staticmethod
    def _stop(p: subprocess.Popen[bytes]) -> None:
        if p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    @staticmethod
    def _run(argv: list[str], env: dict[str, str], timeout: float, check: bool,
             input: str | None) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             env=env, cwd=REPO, input=input)
        if check and run.returncode != 0:
            raise AssertionError(
                f"{shlex.join(argv)} exited {run.returncode}: "
                f"{(run.stdout + run.stderr).strip()[-2000:]}")
        return run

    # -- RAPI from the client netns ----------------------------------------------------

    def rapi(self, method: str, path: str, body: Any = None) -> Any:
        """One RAPI call (curl in the client netns, certificate pinned), JSON answer."""
        argv = ["curl", "-sS", "--fail-with-body", "--cacert", RAPI_CERT,
                "--resolve", f"{CERT_CN}:5080:{NET}.100",
                "-u", f"{RAPI_USER}:{RAPI_PASSWORD}", "-X", method,
                "-H", "Content-Type: application/json"]
        if body is not None:
            argv += ["-d", json.dumps(body)]
        # Ganeti issues rapi.pem for CERT_CN: connect by that name, to the cluster IP
        argv.append(f"https://{CERT_CN}:5080{path}")
        run = self.client(*argv, env=system_env())
        return json.loads(run.stdout) if run.stdout.strip() else None

    def wait_job(self, job: int | str, timeout: float = 300) -> dict[str, Any]:
        """Wait for a RAPI job (and the jobs it submitted) to end; its JSON."""
        deadline = time.monotonic() + timeout
        while True:
            j: dict[str, Any] = self.rapi("GET", f"/2/jobs/{job}")
            if j["status"] in ("success", "error", "canceled"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job} still {j['status']} after {timeout}s")
            time.sleep(0.5)
        for r in j.get("opresult") or []:
            if isinstance(r, dict):
                for ok, sub in r.get("jobs", []):
                    if ok:
                        self.wait_job(sub, max(1.0, deadline - time.monotonic()))
        return j


class _StartFailed(Exception):
    pass


class MultiSandboxTestCase(SynchronousTestCase):
    """Base class: ``self.sandbox`` is a running cluster shared by the
    class's tests, brought up in the first test that runs and torn down
    after the class's last test (or when the process exits).

    Subclasses may set ``sandbox_nodes``, ``sandbox_instances`` and
    ``sandbox_templates``.  Prefer few, long tests: under ``trial -j`` the
    class's tests may land in different workers, which then take turns on
    the one sandbox (each brings it up again)."""

    sandbox_nodes: ClassVar[int] = 3
    sandbox_instances: ClassVar[int] = 6
    sandbox_templates: ClassVar[str | None] = None
    _sandbox: ClassVar[MultiSandbox | None] = None
    _sandbox_left: ClassVar[int] = 0
    sandbox: MultiSandbox

    def setUp(self) -> None:
        cls = type(self)
        if cls._sandbox is None:
            check_can_run()
            sb = MultiSandbox(cls.sandbox_nodes, cls.sandbox_instances, cls.sandbox_templates)
            cls._sandbox_left = len([n for n in dir(cls) if n.startswith("test")
                                     and callable(getattr(cls, n))])
            atexit.register(sb.down)
            sb.up()
            cls._sandbox = sb
        self.sandbox = cls._sandbox
        self.addCleanup(self._sandbox_done)

    @classmethod
    def _sandbox_done(cls) -> None:
        cls._sandbox_left -= 1
        if cls._sandbox_left <= 0 and cls._sandbox is not None:
            sb, cls._sandbox = cls._sandbox, None
            sb.down()


TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class DaemonSandboxTestCase(MultiSandboxTestCase):
    """A :class:`MultiSandboxTestCase` that runs our agents on the nodes and
    our daemon on a node (in the node's netns, with its ssconf, server.pem,
    hmac.key and the cluster's rapi.pem); their logs stay in ``self.work``
    (``/tmp/<work_prefix>...``) for a failure."""

    work_prefix: ClassVar[str] = "maintd-sandbox-"

    def setUp(self) -> None:
        super().setUp()
        # kept afterwards: the daemons' and agents' logs for a failure
        self.work = tempfile.mkdtemp(prefix=self.work_prefix, dir="/tmp")
        self.password = os.path.join(self.work, "rapi-password")
        with open(self.password, "w") as f:
            f.write(RAPI_PASSWORD + "\n")
        os.chmod(self.password, 0o600)

    def until(self, what: str, cond: Any, timeout: float = 300) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            time.sleep(1)
        self.fail(f"{what}: not within {timeout:.0f}s (logs in {self.work})\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for name in sorted(os.listdir(self.work)):
            if name.endswith((".log", ".out")):
                with open(os.path.join(self.work, name), errors="replace") as f:
                    tail = f.read()[-1500:]
                out.append(f"--- {name}\n{tail}")
        return "\n".join(out)

    def whitelist(self, name: str) -> str:
        """An (empty) whitelist directory: root's, mode 0755."""
        path = os.path.join(self.work, name)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o755)
        return path

    def start_agent(self, n: int, report: dict[str, Any] | None) -> None:
        sb = self.sandbox
        lib = sb.node_lib(n)
        argv = [TWISTD,
                "-n", "--pidfile=", "-l", os.path.join(self.work, f"agent{n}.log"),
                "ganeti-maintd-agent", "-p", "1817", "-b", sb.node_ip(n),
                "--hmac-key", f"{lib}/hmac.key", "--ssl-cert", f"{lib}/server.pem",
                "--state-dir", os.path.join(self.work, f"agent{n}"),
                "--hostname", sb.node_name(n), "--diagnose-interval", "2",
                "--repair-dir", self.whitelist(f"repair{n}")]
        if report is not None:
            wl = self.whitelist(f"diag{n}")
            script = os.path.join(wl, "diag")
            with open(script, "w") as f:
                f.write("#!/bin/sh\necho '" + json.dumps(report) + "'\n")
            os.chmod(script, 0o755)
            argv += ["--diagnose-dir", wl, "--diagnose-command", "diag"]
        sb.spawn(n, argv, os.path.join(self.work, f"agent{n}.out"))

    def start_daemon(self, n: int, delay: int = 10,
                     *extra: str) -> tuple[subprocess.Popen[bytes], str]:
        sb = self.sandbox
        lib = sb.node_lib(n)
        state_dir = os.path.join(self.work, f"state{n}")
        argv = [TWISTD,
                "-n", "--pidfile=", "-l", os.path.join(self.work, f"daemon{n}.log"),
                "ganeti-maintd", "--rapi", RAPI_URL, "--rapi-user", RAPI_USER,
                "--rapi-password-file", self.password, "--rapi-cert", RAPI_CERT,
                "--state-dir", state_dir, "--hostname", sb.node_name(n),
                "--ssconf-dir", lib, "--noded-cert", f"{lib}/server.pem",
                "--master-check-interval", "5", "--round-delay", str(delay),
                "--busy-round-delay", str(delay), "--job-wait", "20",
                "--agent-cert", f"{lib}/server.pem", "--hmac-key", f"{lib}/hmac.key",
                "-p", "1816", "-b", sb.node_ip(n), *extra]
        return sb.spawn(n, argv, os.path.join(self.work, f"daemon{n}.out")), state_dir

