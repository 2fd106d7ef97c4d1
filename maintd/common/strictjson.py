"""One strict JSON reader for everything the daemon reads from outside.

RAPI answers, node reports, the state file, a state replica, control-socket
requests and scenario files all go through :func:`loads`, which refuses what
Python's :func:`json.loads` quietly accepts and what strict parsers elsewhere
would reject:

- ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON; they would come back out
  of our own JSON writers and break other clients),
- the same key twice in one object (which value wins is undefined),
- bytes that are not UTF-8, and strings that cannot be UTF-8 (a lone
  surrogate such as ``"\ud800"``: our writers would fail on it later),
- numbers too large for a float (``1e999``, which Python reads as infinity),
- input larger than ``max_bytes`` or nested deeper than ``max_depth``.

Every failure is a :class:`StrictJSONError` whose message names the source
(a file, a node, a URL) and says what is wrong, in one line: callers log it
as it is, never a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

#: Default size bound: larger than any RAPI bulk answer of a 1,000-node,
#: 20,000-instance cluster (about 22 MB), small enough to stop a runaway peer.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Default nesting bound: real documents nest less than 10 levels.
DEFAULT_MAX_DEPTH = 64


class StrictJSONError(ValueError):
    """A document that is not strict, bounded JSON; the message names the source."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_INF = float("inf")


def _finite_float(text: str) -> float:
    value = float(text)
    if value == _INF or value == -_INF:
        raise ValueError(f"number {text[:32]} is too large")
    return value


#: A ``\\uXXXX`` escape of a surrogate: an odd run of backslashes before
#: the ``u`` (an even one is literal backslashes followed by the letter u).
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u([dD][89a-fA-F][0-9a-fA-F]{2})")


#: A surrogate code point in a str (only a str that did not come from UTF-8
#: bytes can hold one; it cannot be encoded back).
_SURROGATE_CHAR = re.compile("[\ud800-\udfff]")


def _lone_surrogate(text: str) -> bool:
    """Whether the JSON ``text`` escapes a surrogate that is not half of a pair.

    A high surrogate escape must be followed at once by a low one (the pair
    is one character once parsed); any other surrogate escape gives a
    Python string that cannot be encoded as UTF-8.
    """
    high_end = -1  # end of an unpaired high surrogate escape, or -1
    for m in _SURROGATE_ESCAPE.finditer(text):
        if int(m.group(1), 16) <= 0xDBFF:
            if high_end >= 0:
                return True
            high_end = m.end()
        else:
            if high_end != m.end() - 6:
                return True
            high_end = -1
    return high_end >= 0


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when *value* nests deeper than *limit* lists/dicts (iterative walk:
    safe on values of any depth, unlike a recursive encoder)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def loads(
    data: bytes | bytearray | memoryview | str,
    source: str,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_depth: int | None = DEFAULT_MAX_DEPTH,
    object_hook: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:
    """Parse *data* strictly; *source* names where it came from in errors.

    ``max_depth`` is checked on the parsed value with an iterative walk (cheap
    for small documents); pass ``None`` for large trusted-shape documents such
    as RAPI bulk answers, which are still protected from stack exhaustion by
    the parser's own recursion limit (reported as a StrictJSONError too).
    ``object_hook`` is applied to every object after the duplicate-key check.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    size = len(data)
    if max_bytes is not None and size > max_bytes:
        raise StrictJSONError(source, f"document of {size} bytes exceeds the limit of {max_bytes}")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise StrictJSONError(source, f"not UTF-8 (byte {e.start})") from None
    else:
        text = data
        if not text.isascii():
            # (a search, not text.encode(): no copy of a large document)
            bad = _SURROGATE_CHAR.search(text)
            if bad is not None:
                raise StrictJSONError(source, f"not UTF-8 (character {bad.start()})")
    if text.startswith("\ufeff"):
        raise StrictJSONError(source, "starts with a byte order mark")

    def pairs_hook(pairs: list[tuple[str, Any]]) -> Any:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise ValueError(f"duplicate key {key[:64]!r}")
                seen.add(key)
        return object_hook(obj) if object_hook is not None else obj

    try:
        value = json.loads(
            text,
            object_pairs_hook=pairs_hook,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise StrictJSONError(source, "nested too deeply") from None
    except json.JSONDecodeError as e:
        raise StrictJSONError(source, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise StrictJSONError(source, str(e)) from None
    if max_depth is not None and depth_exceeds(value, max_depth):
        raise StrictJSONError(source, f"nested deeper than {max_depth} levels")
    if "\\u" in text and _lone_surrogate(text):
        raise StrictJSONError(source, "a string holds a lone surrogate (not UTF-8)")
    return value
