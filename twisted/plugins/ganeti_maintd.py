"""twistd plugin for ganeti-maintd.

Kept free of heavy imports so plugin discovery and ``twistd --help`` stay fast;
the real code is in :mod:`maintd.daemon.tap`.
"""

from twisted.application.service import ServiceMaker

ganeti_maintd = ServiceMaker(
    "ganeti-maintd",
    "maintd.daemon.tap",
    "Ganeti maintenance daemon: incidents, auto-repair and balancing over RAPI",
    "ganeti-maintd",
)
