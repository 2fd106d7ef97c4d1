"""Cluster I/O: everything that talks to Ganeti or its nodes.

``rapi/`` (the RAPI client and model loader), ``model`` (the immutable cluster
snapshot), ``mond`` (monitoring daemon client), ``voting`` (the master vote
over noded) and ``executor`` (live-repair executors)."""
