"""The read-only HTTP state API (Klein), as in ganeti-maintd(8).

=================  ===================================================
``GET /``          ``[1]``: the supported protocol versions
``GET /1``         ``null``
``GET /1/status``  the incidents (``Incident.to_json`` objects)
``GET /1/jobs``    ids of the Ganeti jobs the daemon waits for
``GET /1/evacuated``  names of recently evacuated instances
``GET /1/last-round``  summary of the last round (and the dry-run plan)
=================  ===================================================

Every path works with and without a trailing slash; ``HEAD`` works like
``GET``.  Unknown paths answer 404 and other methods 405, both with a JSON
``{"error": ...}`` body.  The bodies are encoded once per state change (the
store calls :meth:`StateAPI.update`) and then served as they are: each part
is rebuilt only when the part of the state it shows changed.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from maintd.state import MaintState

JSON = b"application/json"
API_VERSIONS = [1]
_METHODS = ["GET", "HEAD"]


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


class StateAPI:
    """Serves the latest :class:`MaintState` given to :meth:`update`."""

    app = Klein()

    def __init__(self, state: MaintState | None = None) -> None:
        self._root = _encode(API_VERSIONS)
        self._null = _encode(None)
        self._parts: dict[str, tuple[object, bytes]] = {}
        self.update(state if state is not None else MaintState())

    def update(self, state: MaintState) -> None:
        """Show ``state`` from now on (re-encode only what changed)."""
        self._set("status", state.incidents, lambda: [i.to_json() for i in state.incidents])
        self._set("jobs", state.jobs, lambda: list(state.jobs))
        self._set("evacuated", state.evacuated, lambda: list(state.evacuated))
        self._set("last-round", state.last_round, lambda: dict(state.last_round))

    def _set(self, name: str, part: object, build: Any) -> None:
        old = self._parts.get(name)
        # Identity first (cheap, the usual case: evolve() keeps untouched
        # parts), then equality.
        if old is not None and (old[0] is part or old[0] == part):
            return
        self._parts[name] = (part, _encode(build()))

    def body(self, name: str) -> bytes:
        return self._parts[name][1]

    def resource(self) -> IResource:
        return self.app.resource()

    # --- routes -----------------------------------------------------------

    @staticmethod
    def _json(request: IRequest, body: bytes, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", JSON)
        return body

    @app.route("/", methods=_METHODS)
    def root(self, request: IRequest) -> bytes:
        return self._json(request, self._root)

    @app.route("/1", methods=_METHODS, strict_slashes=False)
    def version(self, request: IRequest) -> bytes:
        return self._json(request, self._null)

    @app.route(
        '/1/<any("status","jobs","evacuated","last-round"):part>',
        methods=_METHODS,
        strict_slashes=False,
    )
    def part(self, request: IRequest, part: str) -> bytes:
        return self._json(request, self._parts[part][1])

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace") if request.path else ""
        return self._json(request, _encode({"error": "not found", "path": path}), 404)

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        method = request.method.decode("ascii", "replace") if request.method else ""
        request.setHeader(b"Allow", b"GET, HEAD")
        body = {"error": "method not allowed", "method": method, "allowed": _METHODS}
        return self._json(request, _encode(body), 405)
