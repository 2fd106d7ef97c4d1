"""Ganeti's RAPI users file (``/var/lib/ganeti/rapi/users``) and basic auth.

Lines ``user password [options]``; ``options`` is a comma-separated list
where ``write`` grants write access (``read`` is implied).  Passwords may be
prefixed ``{CLEARTEXT}`` or ``{HA1}`` (hex MD5 of ``user:realm:password`` with
realm ``Ganeti Remote API``).  ``#`` starts a comment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import attrs

REALM = "Ganeti Remote API"


class UsersFileError(ValueError):
    """The users file cannot be parsed (message names file and line)."""


@attrs.frozen
class User:
    name: str
    password: str  # as written, with its optional {SCHEME} prefix
    write: bool = False

    def check(self, password: str) -> bool:
        stored = self.password
        if stored.upper().startswith("{HA1}"):
            ha1 = hashlib.md5(f"{self.name}:{REALM}:{password}".encode()).hexdigest()
            return hmac.compare_digest(stored[5:].lower(), ha1)
        if stored.upper().startswith("{CLEARTEXT}"):
            stored = stored[len("{CLEARTEXT}") :]
        return hmac.compare_digest(stored.encode(), password.encode())


def parse_users(text: str, source: str = "users file") -> dict[str, User]:
    users: dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise UsersFileError(f"{source}:{number}: expected 'user password [options]'")
        options = {o.strip().lower() for o in parts[2].split(",")} if len(parts) > 2 else set()
        users[parts[0]] = User(parts[0], parts[1], "write" in options)
    return users


def load_users(path: str) -> dict[str, User]:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_users(f.read(), path)
    except OSError as err:
        raise UsersFileError(f"cannot read RAPI users file {path}: {err.strerror}") from err


def parse_basic_auth(header: bytes | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None
