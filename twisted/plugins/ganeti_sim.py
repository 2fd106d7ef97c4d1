"""twistd plugin for the simulated Ganeti cluster (RAPI + per-node mond)."""

from twisted.application.service import ServiceMaker

ganeti_sim = ServiceMaker(
    "ganeti-sim",
    "maintd.sim.tap",
    "Simulated Ganeti cluster: RAPI and per-node monitoring daemons",
    "ganeti-sim",
)
