"""ganeti-maintd: the maintenance daemon for Ganeti clusters."""

__version__ = "0.1.0"
