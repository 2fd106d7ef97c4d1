"""Admin commands (console scripts): ``ctl`` (ganeti-maintd-ctl), ``plan``
(ganeti-maintd-plan) and ``snapshot`` (ganeti-maintd-snapshot)."""
