"""ganeti-maintd's trial suite.

Hypothesis' wall-clock limits are off for the whole suite: its per-example
``deadline`` and its ``too_slow`` health check measure elapsed time, and the
suite runs with ``trial -j2`` on shared, busy machines, where one stalled
draw (5.8 s seen) failed test_common_strictjson although nothing was wrong.
Example counts bound the work instead.  A test's own ``@settings`` still
wins for what it sets.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "maintd-suite", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("maintd-suite")
