"""Signed messages with the cluster HMAC key, the way Ganeti's confd signs.

Ganeti distributes one secret to every node, ``/var/lib/ganeti/hmac.key``;
confd signs its messages with it (``serializer.DumpSignedJson``)::

    {"msg": TEXT, "salt": SALT, "hmac": HEX}

where ``TEXT`` is the JSON-encoded payload and ``HEX`` the HMAC-SHA1 of
``SALT + TEXT`` under the key (the file's bytes, as Ganeti reads them).  As
in confd's requests the salt carries the time: the decimal Unix seconds at
signing.  A verifier refuses a message whose signature is wrong and one whose
time is more than ``window`` seconds away from its own clock (a replay of an
old message, or a node with a broken clock).

Used by the node agent (its reports and answers), the daemon (verifying
reports, signing repair requests), the simulator's agents, and the state
replication.  Pure functions apart from :func:`read_key`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from maintd.common import strictjson

DEFAULT_KEY_FILE = "/var/lib/ganeti/hmac.key"
#: Seconds a signed message's time may differ from the verifier's clock.
DEFAULT_WINDOW = 300.0
#: Largest signed envelope accepted (bytes of JSON).
MAX_ENVELOPE = 1024 * 1024
#: Nesting bound of envelope and payload.
MAX_DEPTH = 32
_SALT = re.compile(r"^[0-9]{1,15}$")
_HEX = re.compile(r"^[0-9a-f]{40}$")


class KeyFileError(Exception):
    """The HMAC key file cannot be used; the message names it."""


class SignatureError(Exception):
    """A message that is not validly signed.

    ``kind`` says why: ``"unsigned"`` (no envelope), ``"malformed"`` (an
    envelope that is not one), ``"bad signature"``, ``"stale"`` (time
    outside the window).  The message names the source.
    """

    def __init__(self, source: str, kind: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.kind = kind
        self.detail = detail


def read_key(path: str) -> bytes:
    """The key file's bytes (Ganeti's key is 40 hex digits and a newline).

    Raises :class:`KeyFileError` naming the file when it is missing,
    unreadable, not a regular file or empty.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise KeyFileError(f"cannot read HMAC key {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyFileError(f"HMAC key {path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            key = f.read(4097)
    finally:
        os.close(fd)
    if not key.strip():
        raise KeyFileError(f"HMAC key {path} is empty")
    if len(key) > 4096:
        raise KeyFileError(f"HMAC key {path} is larger than 4096 bytes")
    return key


def digest(key: bytes, salt: str, text: str) -> str:
    """Ganeti's ``Sha1Hmac(key, text, salt)``: HMAC-SHA1 over salt + text, hex."""
    return hmac.new(key, salt.encode("utf-8") + text.encode("utf-8"), hashlib.sha1).hexdigest()


def encode(payload: Any) -> str:
    """The canonical JSON text of a payload (sorted keys, no spaces)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sign_text(text: str, key: bytes, now: float) -> dict[str, str]:
    """The envelope of an already encoded message."""
    salt = str(int(now))
    return {"msg": text, "salt": salt, "hmac": digest(key, salt, text)}


def sign(payload: Any, key: bytes, now: float) -> dict[str, str]:
    """The envelope ``{"msg", "salt", "hmac"}`` of ``payload`` signed at ``now``."""
    return sign_text(encode(payload), key, now)


def dumps(payload: Any, key: bytes, now: float) -> bytes:
    """:func:`sign`, encoded: what goes on the wire."""
    return json.dumps(sign(payload, key, now), sort_keys=True).encode("utf-8")


def is_envelope(document: Any) -> bool:
    """Whether ``document`` looks like a signed envelope (has msg/salt/hmac)."""
    return isinstance(document, Mapping) and {"msg", "salt", "hmac"} <= set(document)


def verify(
    document: Any,
    key: bytes,
    now: float,
    *,
    source: str,
    window: float = DEFAULT_WINDOW,
    max_bytes: int = MAX_ENVELOPE,
) -> tuple[Any, float]:
    """Check a decoded envelope; return ``(payload, signing time)``.

    Raises :class:`SignatureError` naming ``source``.  The signature is
    checked before anything of the message is parsed; the time only after
    the signature (an attacker cannot probe the window).
    """
    if not is_envelope(document):
        raise SignatureError(source, "unsigned", "message is not signed (no msg/salt/hmac)")
    msg, salt, mac = document["msg"], document["salt"], document["hmac"]
    if not (isinstance(msg, str) and isinstance(salt, str) and isinstance(mac, str)):
        raise SignatureError(source, "malformed", "signed envelope members are not strings")
    if set(document) - {"msg", "salt", "hmac"}:
        # a key_selector (multi-cluster keys) or anything else: not ours
        raise SignatureError(source, "malformed", "signed envelope has unknown members")
    if not _HEX.match(mac):
        raise SignatureError(source, "malformed", "signature is not 40 hex digits")
    if not hmac.compare_digest(digest(key, salt, msg), mac):
        raise SignatureError(source, "bad signature",
                             "signature does not match the cluster HMAC key")
    if not _SALT.match(salt):
        raise SignatureError(source, "malformed", f"salt {salt[:32]!r} is not a time")
    when = float(int(salt))
    if abs(now - when) > window:
        raise SignatureError(
            source, "stale",
            f"signed {now - when:+.0f}s from now, outside the {window:g}s window")
    try:
        payload = strictjson.loads(msg.encode("utf-8"), source, max_bytes=max_bytes,
                                   max_depth=MAX_DEPTH)
    except strictjson.StrictJSONError as e:
        raise SignatureError(source, "malformed", f"signed message: {e.problem}") from None
    return payload, when


def loads(
    data: bytes,
    key: bytes | None,
    now: float,
    *,
    source: str,
    window: float = DEFAULT_WINDOW,
    allow_unsigned: bool = False,
    max_bytes: int = MAX_ENVELOPE,
) -> tuple[Any, bool]:
    """Decode wire bytes and verify them: ``(payload, signed)``.

    An unsigned document is accepted (``signed`` False) only with
    ``allow_unsigned``; a signed one is always verified (without a ``key``
    it is refused).  Raises :class:`strictjson.StrictJSONError` for bytes
    that are not strict JSON, :class:`SignatureError` otherwise.
    """
    document = strictjson.loads(data, source, max_bytes=max_bytes, max_depth=MAX_DEPTH)
    if not is_envelope(document):
        if allow_unsigned:
            return document, False
        raise SignatureError(source, "unsigned", "report is not signed (no msg/salt/hmac); "
                             "pass --allow-unsigned-reports to accept unsigned reports")
    if key is None:
        raise SignatureError(source, "bad signature", "signed, but no HMAC key to verify it")
    payload, _ = verify(document, key, now, source=source, window=window, max_bytes=max_bytes)
    return payload, True
