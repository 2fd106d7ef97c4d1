"""The RAPI error base the steps catch (the RAPI client's, when installed)."""

from __future__ import annotations

try:
    from maintd.rapi.errors import RapiError
except ImportError:  # pragma: no cover - only before the RAPI client exists

    class RapiError(Exception):  # type: ignore[no-redef]
        pass


__all__ = ["RapiError"]
