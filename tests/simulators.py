"""Test helpers: an embedded simulator started for one test, and a RAPI client pinned to it.

Both register their cleanup with the test, so a test only says what it needs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from maintd.cluster.rapi.client import RapiClient
from maintd.sim.embed import EmbeddedSimulator, free_port

__all__ = ["agent_config", "agent_argv", "client_for", "free_port", "start_simulator"]


def start_simulator(test: TestCase, workdir: str, **kwargs: Any) -> EmbeddedSimulator:
    """An :class:`EmbeddedSimulator` in ``workdir``, started, stopped after ``test``.

    Its node agents listen on a free port unless ``agent_port`` is given."""
    kwargs.setdefault("agent_port", free_port())
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


def agent_config(sim: EmbeddedSimulator) -> dict[str, Any]:
    """``DaemonConfig`` fields for ``sim``'s signed node agents (TLS pinned to
    its server.pem, its HMAC key): the daemon's default, signed path."""
    return {"agent_port": sim.agent_port, "agent_cert": sim.agent_cert,
            "agent_plain_http": sim.plain_http, "hmac_key": sim.hmac_key_file}


def agent_argv(sim: EmbeddedSimulator) -> list[str]:
    """The same as daemon command line options."""
    argv = ["--agent-port", str(sim.agent_port), "--hmac-key", sim.hmac_key_file]
    return argv + (["--agent-plain-http"] if sim.plain_http else
                   ["--agent-cert", sim.agent_cert])
