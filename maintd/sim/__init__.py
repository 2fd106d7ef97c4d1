"""Simulated Ganeti 3.0 cluster (RAPI + per-node mond) for tests, demos and rehearsals.

Start it in-process with :class:`maintd.sim.embed.EmbeddedSimulator` (what
``ganeti-maintd --simulate`` and the end-to-end tests use) or standalone as
``twistd -n ganeti-sim --scenario FILE`` (:mod:`maintd.sim.tap`).

Modules: :mod:`~maintd.sim.cluster` (mutable state, RAPI JSON),
:mod:`~maintd.sim.jobs` (Ganeti-like jobs), :mod:`~maintd.sim.rapi` (Klein
RAPI front), :mod:`~maintd.sim.mond` (per-node mond fronts),
:mod:`~maintd.sim.control` (``/sim/`` API), :mod:`~maintd.sim.runtime` (the
running simulation: state + jobs + faults + timed events),
:mod:`~maintd.sim.scenario` (scenario / hbal text / snapshot loading),
:mod:`~maintd.sim.faults`, :mod:`~maintd.sim.users` (RAPI users file),
:mod:`~maintd.sim.tls` (self-signed ``rapi.pem``).

In tests: ``EmbeddedSimulator(reactor, workdir, clock=task.Clock(),
job_seconds=0, mond_port=free_port())`` gives real sockets with a fake clock
for jobs and timed events; drive it with ``set_diagnose``, ``set_mond``,
``fail_next_jobs``, ``rapi_fault`` and ``state()``, or over HTTP with the
``/sim/`` API (same credentials as RAPI writes).
"""
