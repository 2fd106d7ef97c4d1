"""Ganeti RAPI client: transport (``client``), errors, pinned TLS, jobs, loader."""

from maintd.rapi.client import RapiClient
from maintd.rapi.errors import (
    RapiAuthError,
    RapiBadRequest,
    RapiConfigError,
    RapiConnectionError,
    RapiError,
    RapiMalformed,
    RapiNotFound,
    RapiServerError,
    RapiTimeout,
    RapiTLSError,
)
from maintd.rapi.jobs import JobResult

__all__ = [
    "JobResult",
    "RapiAuthError",
    "RapiBadRequest",
    "RapiClient",
    "RapiConfigError",
    "RapiConnectionError",
    "RapiError",
    "RapiMalformed",
    "RapiNotFound",
    "RapiServerError",
    "RapiTLSError",
    "RapiTimeout",
]
