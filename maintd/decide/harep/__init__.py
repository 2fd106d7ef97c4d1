"""harep's duties inside the maintenance round (pure part).

:mod:`maintd.decide.harep.tags` reads and writes the ``ganeti:watcher:autorepair:``
tags exactly as Ganeti's ``harep`` does (checked against the real harep 3.0
in ``tests/test_harep_interop.py``); :mod:`maintd.decide.harep.decide` holds the
per-instance state machine and the repair decisions.  The round step that
carries them out is :mod:`maintd.daemon.steps.harep`.

Where maintd deliberately differs from harep:

* a drained (not offline) primary of a running DRBD instance gets a live
  migration (``migrate`` permission), not a failover; a drained secondary
  gets a new secondary; a plain instance on a drained primary is left alone
  (harep's data model treats drained as offline and would reinstall it);
* a DRBD instance with an offline primary and a drained secondary waits
  (Ganeti does not fail over to drained nodes) instead of being reinstalled;
* RAPI runs one operation per job, so a reinstall is three jobs over three
  rounds (recreate disks on free nodes, shutdown, reinstall) where harep
  submits one recreate+reinstall job (which Ganeti refuses for instances
  marked up);
* targets are nodes of the instance's group that no other part of the round
  claimed (incident handling runs first), never an iallocator's free choice;
* the pending tag is set (and its job waited for) before the repair job is
  submitted; harep submits first and tags after;
* two pending repairs on one instance are an error for that instance only
  (harep stops altogether); an ``enoperm`` result is written once, not again
  every run while nothing changed;
* instances marked offline are not touched.
"""
