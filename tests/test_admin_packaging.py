"""``pip install -e .`` installs a package whose twistd plugins are found.

setuptools' default editable mode hides ``twisted/plugins`` from Twisted;
``build_backend/maintd_backend.py`` makes ``compat`` the default.  Unit
level: what the backend hands setuptools.  End to end: a throwaway virtualenv
(the dependencies borrowed from this one), a plain ``pip install -e`` of a
copy of the source tree with build isolation from a LOCAL package index
(no network), then ``twistd --help`` and ``ganeti-maintd --version`` from
that virtualenv.  Skipped when no local index is configured.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BACKEND = os.path.join(ROOT, "build_backend", "maintd_backend.py")
#: A local package index with setuptools and wheel (for the isolated build).
LOCAL_INDEX = os.environ.get("MAINTD_TEST_INDEX_URL", "file:///opt/pypi/simple")


def load_backend() -> Any:
    spec = importlib.util.spec_from_file_location("maintd_backend_under_test", BACKEND)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = load_backend()
        self.calls: list[Any] = []
        self.patch(self.backend._setuptools, "build_editable",
                   lambda d, settings, meta: self.calls.append(settings) or "x.whl")

    def test_editable_installs_default_to_compat(self) -> None:
        self.assertEqual(self.backend.build_editable("dist"), "x.whl")
        self.assertEqual(self.calls, [{"editable_mode": "compat"}])

    def test_an_explicit_mode_wins(self) -> None:
        self.backend.build_editable("dist", {"editable-mode": "strict"})
        self.backend.build_editable("dist", {"editable_mode": "lenient", "x": "y"})
        self.assertEqual(self.calls, [{"editable-mode": "strict"},
                                      {"editable_mode": "lenient", "x": "y"}])

    def test_the_other_hooks_are_setuptools(self) -> None:
        from setuptools import build_meta

        for hook in ("build_wheel", "build_sdist", "get_requires_for_build_editable",
                     "prepare_metadata_for_build_editable"):
            self.assertIs(getattr(self.backend, hook), getattr(build_meta, hook), hook)


class EditableInstallTests(SynchronousTestCase):
    def test_plain_pip_install_e_finds_the_plugins(self) -> None:
        if not LOCAL_INDEX.startswith("file://") or not os.path.isdir(LOCAL_INDEX[7:]):
            raise SkipTest(f"no local package index at {LOCAL_INDEX} (set MAINTD_TEST_INDEX_URL "
                           "to a file:// index with setuptools and wheel): the isolated build "
                           "would need the network")
        work = os.path.abspath(self.mktemp())
        src = os.path.join(work, "src")
        ignore = shutil.ignore_patterns("__pycache__", "dropin.cache", "*.egg-info")
        for name in ("maintd", "twisted", "build_backend"):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(src, name), ignore=ignore)
        for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md"):
            shutil.copy(os.path.join(ROOT, name), src)
        venv = os.path.join(work, "venv")
        python = os.path.join(sys.base_prefix, "bin", "python3")
        subprocess.run([python, "-m", "venv", venv], check=True, timeout=120)
        # dependencies (Twisted, treq, ...) from this virtualenv, not installed again
        purelib = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(purelib, "maintd-test-deps.pth"), "w") as f:
            f.write(site.getsitepackages()[0] + "\n")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_INDEX_URL")}
        r = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "--no-deps",
                            "--index-url", LOCAL_INDEX, "-e", src],
                           capture_output=True, text=True, timeout=300, env=env, cwd=work)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # from elsewhere, with that virtualenv's interpreter
        r = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                            "from twisted.scripts.twistd import run; run()", "--help"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=work)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"(?m)^ +ganeti-maintd +")
        self.assertRegex(r.stdout, r"(?m)^ +ganeti-sim +")
        r = subprocess.run([os.path.join(venv, "bin", "ganeti-maintd"), "--version"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=work)
        self.assertEqual((r.returncode, r.stdout.split()[0]), (0, "ganeti-maintd"), r.stderr)
