"""Test helpers: an embedded simulator started for one test, and a RAPI client pinned to it.

Both register their cleanup with the test, so a test only says what it needs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from maintd.cluster.rapi.client import RapiClient
from maintd.sim.embed import EmbeddedSimulator, free_port

__all__ = ["client_for", "free_port", "start_simulator"]


def start_simulator(test: TestCase, workdir: str, **kwargs: Any) -> EmbeddedSimulator:
    """An :class:`EmbeddedSimulator` in ``workdir``, started, stopped after ``test``."""
    sim = EmbeddedSimulator(reactor, workdir, **kwargs)
    sim.startService()
    test.addCleanup(sim.stopService)
    return sim


def client_for(test: TestCase, sim: EmbeddedSimulator, **kwargs: Any) -> RapiClient:
    """maintd's RAPI client for ``sim`` (its user, password file, pinned certificate)."""
    client = RapiClient.create(
        sim.rapi_url,
        reactor=reactor,
        user=sim.rapi_user,
        password_file=sim.rapi_password_file,
        cert=sim.rapi_cert,
        **kwargs,
    )
    test.addCleanup(lambda: defer.ensureDeferred(client.close()))
    return client
