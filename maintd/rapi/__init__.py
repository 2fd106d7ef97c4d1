"""Ganeti RAPI client.

Modules: :mod:`~maintd.rapi.client` (``RapiClient``: transport, reads,
writes, job waits), :mod:`~maintd.rapi.errors` (the ``RapiError``
hierarchy), :mod:`~maintd.rapi.tls` (the pinned certificate),
:mod:`~maintd.rapi.jobs` (``JobResult``), :mod:`~maintd.rapi.loader` (RAPI
JSON -> :mod:`maintd.model`).  Import from those modules; this package
re-exports nothing, so importing the errors does not load the transport.
"""
