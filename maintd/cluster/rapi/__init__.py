"""Ganeti RAPI client.

Modules: :mod:`~maintd.cluster.rapi.client` (``RapiClient``: transport, reads,
writes, job waits), :mod:`~maintd.cluster.rapi.errors` (the ``RapiError``
hierarchy), :mod:`~maintd.cluster.rapi.tls` (the pinned certificate),
:mod:`~maintd.cluster.rapi.jobs` (``JobResult``), :mod:`~maintd.cluster.rapi.loader` (RAPI
JSON -> :mod:`maintd.cluster.model`).  Import from those modules; this package
re-exports nothing, so importing the errors does not load the transport.
"""
