"""Durable, atomic file replacement: temporary file, fsync, rename, directory fsync.

A crash at any moment leaves either the old or the new file, never a torn
one.  Used by the daemon's state store and the agent's replica store.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(path: str, data: bytes, tmp_path: str | None = None) -> None:
    """Make ``data`` the content of ``path`` (mode 0600); ``OSError`` on failure,
    the temporary file removed and ``path`` untouched."""
    tmp = tmp_path or path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
