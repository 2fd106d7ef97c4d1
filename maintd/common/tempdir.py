"""A temporary directory that lives as long as a service.

``--simulate`` (without ``--state-dir``) and ``twistd ganeti-sim`` (without
``--workdir``) work in a fresh ``mkdtemp`` directory: :func:`temporary_dir`
makes it and returns a service that removes it when it stops; an ``atexit``
handler covers a start that fails before the services run (twistd's
daemonising parents leave by ``os._exit`` and never stop them).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

from twisted.application import service


class TempDirService(service.Service):
    """Removes ``path`` (and everything in it) when stopped."""

    def __init__(self, path: str) -> None:
        self.path = path

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        shutil.rmtree(self.path, ignore_errors=True)


def temporary_dir(prefix: str) -> TempDirService:
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return TempDirService(path)
