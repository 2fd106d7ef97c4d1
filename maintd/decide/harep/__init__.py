"""harep's duties inside the maintenance round (pure part).

:mod:`maintd.decide.harep.tags` reads and writes the ``ganeti:watcher:autorepair:``
tags exactly as Ganeti's ``harep`` does; :mod:`maintd.decide.harep.decide`
holds the per-instance state machine and the repair decisions (harep's
opcodes with harep's parameters, as RAPI calls);
:mod:`maintd.decide.harep.opcodes` maps those RAPI calls to the Ganeti
opcodes they become; :mod:`maintd.decide.harep.recover` finds a repair's
jobs again by their reason when the daemon stopped before tagging them.  The
real harep 3.0 checks all of it in ``tests/test_harep_interop.py`` (same
opcodes, same parameters, same tag sequence).  The round step that carries
the decisions out is :mod:`maintd.daemon.steps.harep`.

The RAPI limit: RAPI runs one operation per job (rlib2's generic resources
make a one-opcode job of each write; its reinstall resource makes its own
shutdown + reinstall [+ startup] job), and offers no way to submit harep's
recreate-disks + reinstall job.  maintd submits the two as consecutive jobs
in harep's order, in the same round, then one pending tag with both ids.
They cannot run the wrong way round to harm: until recreate-disks has moved
the instance, its primary is the offline node and the reinstall job's
shutdown fails its check before changing anything (the repair then ends as
a failure, as harep's own job would on any error).  harep also prefixes its
repair job with a test-delay opcode (``--job-delay``) so its tag job can run
first; RAPI has no such opcode, so maintd's pending tag job queues behind
the repair and is not waited for (the job ids are in the state file).

The round's non-conflict guarantee with an iallocator: a repair starts only
when the instance's online nodes are free this round and so is every
*usable* node the iallocator may pick (the instance's group for
replace-disks, which relocates within the group; the whole cluster for
recreate-disks, which Ganeti runs as an allocation with no group); all of
those nodes are then taken out of ``ctx.free_nodes``, so balancing (which
runs later in the round and only moves instances between free nodes) never
touches a node the iallocator may choose.  Nodes claimed earlier in the
round by incident handling are either unusable (offline, or drained by it:
the iallocator skips them) or block the repair until a later round.
Repairs among themselves are serialised by Ganeti's locks, as harep's are.

Where maintd deliberately differs from harep:

* a drained (not offline) primary of a running DRBD instance gets a live
  migration (``migrate`` permission), not a failover; a drained secondary
  gets a new secondary; a plain instance on a drained primary is left alone
  (harep's data model treats drained as offline and would reinstall it);
* a DRBD instance with an offline primary and a drained secondary waits
  (Ganeti does not fail over to drained nodes) instead of being reinstalled;
* the reinstall job shuts the instance down first and starts it again if
  it was up (harep's reinstall opcode fails on instances marked up);
* a repair waits (instead of failing) while no node is usable for the
  iallocator, or while other steps of the round hold nodes it could pick;
* two pending repairs on one instance are an error for that instance only
  (harep stops altogether); an ``enoperm`` result is written once, not again
  every run while nothing changed;
* instances marked offline are not touched.
"""
