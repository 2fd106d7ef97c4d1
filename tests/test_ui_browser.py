"""The status page in a real headless browser (Debian's chromium + chromedriver,
driven by selenium): a running ``twistd -n ganeti-maintd --simulate`` daemon's
``/ui`` shows an incident appear and reach ``completed``, by its own refresh.

The failing report is injected through the simulator's ``/sim/`` control API
(``PUT /sim/nodes/NODE/diagnose``), with HTML in its ``details``: the page
must show it as text.  Every wait is bounded explicit polling
(``WebDriverWait``) on a condition.  Screenshots (desktop and phone width)
go to ``_trial_temp/ui-*.png``.

Skips when chromium, chromedriver or selenium are missing; fails instead
with ``MAINTD_REQUIRE_REAL_GANETI=1`` (CI installs them).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import ssl
import sys
import tempfile
import urllib.request
from typing import Any

from twisted.internet import defer, protocol, reactor, threads
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from maintd.sim.embed import free_port
from tests.tools import skip_or_fail

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
NODE = "node4.sim.test"
EVIL = '<b id="pwn">bold</b><script>document.title="owned"</script> & disk sda failing'
RAPI_LINE = re.compile(rb"RAPI at (https://127\.0\.0\.1:\d+)")
READY = b"Site starting on"
ROW = f'tr.incident[data-node="{NODE}"]'


def _find(name: str, *extra: str) -> str | None:
    for path in (shutil.which(name), *extra):
        if path and os.access(path, os.X_OK):
            return path
    return None


def browser_parts() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip/fail naming what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        skip_or_fail("selenium is not installed (pip install -e '.[test]')")
    chromium = _find("chromium", "/usr/bin/chromium", "/usr/lib/chromium/chromium")
    driver = _find("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
    if chromium is None or driver is None:
        skip_or_fail("chromium and chromedriver are not installed "
                     "(apt-get install chromium chromium-driver)")
    assert chromium is not None and driver is not None
    return chromium, driver


class Daemon(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ready: defer.Deferred[str] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        m = RAPI_LINE.search(self.output)
        if not self.ready.called and m and READY in self.output:
            self.ready.callback(m.group(1).decode())

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(AssertionError(f"daemon exited early:\n{self.output.decode()}"))
        self.ended.callback(None)


class Browser:
    """A headless chromium (blocking calls: run them in a thread)."""

    def __init__(self, chromium: str, driver: str, profile: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                    "--no-first-run", "--disable-extensions"):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(options=options, service=Service(driver))

    def wait(self, condition: Any, timeout: float, message: str) -> Any:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.25,
                             ignored_exceptions=(WebDriverException,)).until(condition, message)

    def row(self) -> Any:
        """(id, status, text) of the incident row of NODE, or None; read at once
        in the page (it reloads itself)."""
        return self.driver.execute_script(
            "const r = document.querySelector(arguments[0]);"
            "return r ? [r.id, r.dataset.status, r.innerText] : null;", ROW)


class BrowserTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.chromium, self.chromedriver = browser_parts()
        self.base = tempfile.mkdtemp(prefix="maintd-ui-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.shots = os.path.abspath(".")  # trial's _trial_temp

    def spawn(self, port: int) -> Daemon:
        proto = Daemon()
        args = ["-n", "--pidfile=", "ganeti-maintd", "--simulate", "-p", str(port),
                "--state-dir", os.path.join(self.base, "state"), "--round-delay", "0.5"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        reactor.spawnProcess(proto, sys.executable, TWISTD + args, env=env,  # type: ignore[attr-defined]
                             path=self.base)
        return proto

    def inject(self, rapi: str) -> Any:
        """PUT the failing report through the simulator's control API (pinned TLS)."""
        sim = os.path.join(self.base, "state", "sim")
        with open(os.path.join(sim, "rapi-password")) as f:
            password = f.read().strip()
        tls = ssl.create_default_context(cafile=os.path.join(sim, "rapi.pem"))
        tls.check_hostname = False  # the simulator's certificate names no host; pinned above
        body = json.dumps({"status": "evacuate", "command": "", "details": EVIL}).encode()
        req = urllib.request.Request(f"{rapi}/sim/nodes/{NODE}/diagnose", data=body,
                                     method="PUT")
        auth = base64.b64encode(f"maintd:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {auth}")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=tls, timeout=10) as answer:
            return json.loads(answer.read())

    async def _stop(self, proto: Daemon) -> None:
        if not proto.ended.called:
            try:
                proto.transport.signalProcess(signal.SIGTERM)  # type: ignore[union-attr]
            except Exception:
                pass
            await proto.ended

    def test_incident_appears_and_completes_on_the_page(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._incident())

    async def _incident(self) -> None:
        port = free_port()
        proto = self.spawn(port)
        try:
            rapi = await proto.ready
            browser = await threads.deferToThread(
                Browser, self.chromium, self.chromedriver, os.path.join(self.base, "profile"))
            try:
                await threads.deferToThread(self._watch, browser, port, rapi)
            finally:
                await threads.deferToThread(browser.driver.quit)
        finally:
            await self._stop(proto)

    def _watch(self, browser: Browser, port: int, rapi: str) -> None:
        d = browser.driver
        d.set_window_size(1280, 900)
        d.get(f"http://127.0.0.1:{port}/ui")
        self.assertIn("ganeti-maintd", d.title)
        self.assertIsNone(browser.row())
        browser.wait(lambda _: "Last round" in d.page_source and "#" in d.page_source, 60,
                     "no round shown on the page")
        self.inject(rapi)
        # The page reloads itself: no further get() from here on.
        first = browser.wait(lambda _: browser.row(), 90, "the incident never appeared")
        incident_id = first[0]
        self.assertIn(first[1], ("noted", "pending"))
        # node-supplied HTML is text: no element, no script ran
        self.assertIn(EVIL, first[2])
        self.assertEqual(d.find_elements("css selector", "#pwn"), [])
        self.assertNotEqual(d.title, "owned")
        d.save_screenshot(os.path.join(self.shots, "ui-desktop.png"))

        def completed(_: Any) -> bool:
            status = d.execute_script(
                "const r = document.getElementById(arguments[0]);"
                "return r ? r.dataset.status : null;", incident_id)
            if status in ("failed", "canceled"):
                raise AssertionError(f"incident ended {status}:\n{d.page_source}")
            return status == "completed"

        browser.wait(completed, 180, "the incident did not reach completed")
        d.save_screenshot(os.path.join(self.shots, "ui-completed.png"))
        # Readable on a phone: nothing wider than the screen.
        d.set_window_size(390, 1600)  # a phone's width; tall, to see the whole page
        d.refresh()
        browser.wait(lambda _: browser.row(), 30, "no incident on the phone-sized page")
        overflow = d.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth;")
        self.assertLessEqual(overflow, 0, "the page scrolls sideways on a phone")
        d.save_screenshot(os.path.join(self.shots, "ui-phone.png"))


class MissingBrowserTests(SynchronousTestCase):
    """Without chromium/chromedriver the browser test skips, naming what to
    install, or fails where CI requires it."""

    def setUp(self) -> None:
        self.patch(sys.modules[__name__], "_find", lambda name, *extra: None)

    def test_skips_with_a_clear_message(self) -> None:
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if k != "MAINTD_REQUIRE_REAL_GANETI"})
        with self.assertRaises(SkipTest) as raised:
            browser_parts()
        self.assertIn("apt-get install chromium chromium-driver", str(raised.exception))

    def test_fails_where_required(self) -> None:
        self.patch(os, "environ", {**os.environ, "MAINTD_REQUIRE_REAL_GANETI": "1"})
        with self.assertRaises(AssertionError) as raised:
            browser_parts()
        self.assertIn("chromium", str(raised.exception))
