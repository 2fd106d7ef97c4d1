"""Decisions: pure functions from a cluster snapshot and the daemon state to
what should be done next. No I/O here.

``incidents`` (incident life cycle and evacuation plans), ``evacuation`` (the
evacuated list), ``harep/`` (instance auto-repair as harep does it) and
``balance/`` (the hbal-equivalent balancer)."""
