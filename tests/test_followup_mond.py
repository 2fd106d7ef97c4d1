"""mond client defaults for big clusters: everyone asked at once, enough open files."""

from __future__ import annotations

import resource

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster import mond
from maintd.cluster.mond import DEFAULT_PARALLEL, MondClient
from maintd.daemon.config import DaemonConfig
from maintd.daemon.fdlimit import STALLED_FACTOR, ensure_fd_limit, fds_needed


class DefaultsTests(SynchronousTestCase):
    def test_daemon_and_client_defaults_agree(self) -> None:
        self.assertEqual(DaemonConfig().mond_parallel, DEFAULT_PARALLEL)
        self.assertEqual(MondClient(task.Clock()).parallel, DEFAULT_PARALLEL)
        self.assertGreaterEqual(DEFAULT_PARALLEL, 1000, "a 1,000-node cluster in one go")

    def test_fds_needed_covers_stalled_requests_and_kept_connections(self) -> None:
        self.assertEqual(STALLED_FACTOR, mond.STALLED_FACTOR)
        # 4 x 1024 outstanding mond requests, 1024 idle agent connections kept
        self.assertEqual(fds_needed(1024), 4 * 1024 + 1024 + 256)
        from maintd.cluster.agent import AgentClient
        self.assertEqual(AgentClient(task.Clock(), key=None, parallel=1024).pool.max_idle, 1024)


class FdLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.saved = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, self.saved)

    def test_raises_the_soft_limit(self) -> None:
        soft, hard = self.saved
        if hard != resource.RLIM_INFINITY and hard < 600:
            self.skipTest(f"hard open-file limit {hard} too low for this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
        self.assertEqual(ensure_fd_limit(500), (500, 500))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (500, hard))

    def test_never_lowers_it(self) -> None:
        soft, _ = self.saved
        now, _ = ensure_fd_limit(10)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), self.saved)
        self.assertGreaterEqual(now, min(soft, 10))

    def test_stops_at_the_hard_limit(self) -> None:
        soft, hard = self.saved
        if hard == resource.RLIM_INFINITY or hard < 64:
            self.skipTest("needs a finite hard limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard // 2), hard))
        self.assertEqual(ensure_fd_limit(hard + 1000), (hard, hard + 1000))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
