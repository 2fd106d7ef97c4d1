"""The RAPI boundary's one exception hierarchy.

Every error names the request (method and URL) and, where the server said
something, a short excerpt of its answer.  Ganeti's error bodies are JSON
``{"code": N, "message": "...", "explain": "..."}`` with an HTML-escaped
message; :func:`describe_error_body` turns them into one readable line.
"""

from __future__ import annotations

import html
from typing import Any

from maintd.common import strictjson

#: Largest error body parsed as JSON (Ganeti's are a few hundred bytes).
MAX_ERROR_BODY = 1024 * 1024
#: How much of a response body an error message quotes.
EXCERPT_CHARS = 200


def excerpt(body: bytes | str | None, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable excerpt of ``body`` for an error message."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def describe_error_body(body: bytes | None) -> tuple[str, dict[str, Any] | None]:
    """(one-line description, parsed Ganeti error object or None) of ``body``."""
    if not body:
        return "", None
    try:
        doc = strictjson.loads(body, "RAPI error body", max_bytes=MAX_ERROR_BODY)
    except strictjson.StrictJSONError:
        return excerpt(body), None
    if isinstance(doc, dict) and ("message" in doc or "explain" in doc):
        message = html.unescape(str(doc.get("message") or ""))
        explain = html.unescape(str(doc.get("explain") or ""))
        text = message if not explain or explain == message else f"{message} ({explain})"
        return excerpt(text), doc
    return excerpt(body), None


class RapiError(Exception):
    """Any failure talking to Ganeti's RAPI.

    ``method``/``url`` name the request (None for errors before one was
    made), ``status`` the HTTP status when there was an answer.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
        body: bytes | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        where = f"{method} {url}: " if method and url else (f"{url}: " if url else "")
        super().__init__(where + message)


class RapiConfigError(RapiError):
    """The client cannot be set up: bad password file, unreadable certificate."""


class RapiConnectionError(RapiError):
    """No answer: connection refused or reset, DNS failure, truncated answer."""


class RapiTimeout(RapiConnectionError):
    """No complete answer within the per-request timeout."""


class RapiTLSError(RapiConnectionError):
    """The TLS handshake failed, e.g. the server certificate is not the pinned one."""


class RapiAuthError(RapiError):
    """401 (bad or missing credentials) or 403 (user lacks the needed access)."""


class RapiNotFound(RapiError):
    """404: the node, instance, group, job or path does not exist."""


class RapiBadRequest(RapiError):
    """4xx other than 401/403/404: Ganeti refused the request as given.

    ``code``, ``ganeti_message`` and ``explain`` carry Ganeti's error body
    (message HTML-unescaped) when it sent one.
    """

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        _, doc = describe_error_body(kw.get("body"))
        doc = doc or {}
        self.code = doc.get("code")
        self.ganeti_message = html.unescape(str(doc.get("message") or ""))
        self.explain = html.unescape(str(doc.get("explain") or ""))


class RapiServerError(RapiError):
    """5xx: Ganeti (or something in front of it) failed."""


class RapiMalformed(RapiError):
    """The answer is not JSON, or not of the shape the endpoint documents."""
