"""Whitelisted commands, by the rules of Ganeti's restricted commands.

A command is a bare name (``[A-Za-z0-9_-]+``) of a file in a whitelist
directory (``/etc/ganeti/node-diagnose-commands``,
``/etc/ganeti/node-repair-commands``).  The directory and the file must be
regular (a directory / a regular executable file), owned by root and not
writable by group or others, and the resolved path (symlinks followed) must
stay inside the resolved directory.  Everything else is refused with a
:class:`WhitelistError` naming the directory or the command.
"""

from __future__ import annotations

import os
import re
import stat

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: Longest command name accepted.
MAX_NAME = 128


class WhitelistError(Exception):
    """A command or whitelist directory that must not be used; names it."""


def _check_owner_mode(st: os.stat_result, what: str, uid: int) -> None:
    if st.st_uid != uid:
        raise WhitelistError(f"{what} is owned by uid {st.st_uid}, not by root")
    if st.st_mode & 0o022:
        raise WhitelistError(
            f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")


def check_dir(directory: str, *, uid: int = 0) -> str:
    """The resolved whitelist directory; :class:`WhitelistError` when unusable."""
    real = os.path.realpath(directory)
    try:
        st = os.stat(real)
    except OSError as e:
        raise WhitelistError(f"whitelist directory {directory}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise WhitelistError(f"whitelist directory {directory} is not a directory")
    _check_owner_mode(st, f"whitelist directory {directory}", uid)
    return real


def check_name(name: str) -> None:
    """Refuse anything but a bare command name."""
    if not isinstance(name, str) or not name:
        raise WhitelistError("empty command name")
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        raise WhitelistError(f"command name {name[:64]!r} is not [A-Za-z0-9_-]+")


def resolve(directory: str, name: str, *, uid: int = 0) -> str:
    """Absolute path of whitelisted command ``name`` in ``directory``.

    Checked at every use (the directory may change while the agent runs).
    """
    check_name(name)
    real_dir = check_dir(directory, uid=uid)
    path = os.path.realpath(os.path.join(real_dir, name))
    if os.path.dirname(path) != real_dir:
        raise WhitelistError(f"command {name} in {directory} leaves the directory "
                             f"(resolves to {path})")
    try:
        st = os.stat(path)
    except OSError as e:
        raise WhitelistError(f"command {name} in {directory}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise WhitelistError(f"command {name} in {directory} is not a regular file")
    _check_owner_mode(st, f"command {name} in {directory}", uid)
    if not st.st_mode & 0o100:
        raise WhitelistError(f"command {name} in {directory} is not executable")
    return path
