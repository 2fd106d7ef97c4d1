"""Simulated Ganeti cluster (RAPI + per-node mond) for tests, demos and rehearsals.

Start it in-process with :class:`maintd.sim.embed.EmbeddedSimulator` or as
``twistd -n ganeti-sim --scenario FILE``.
"""
