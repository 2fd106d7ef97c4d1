"""Service composition for ``twistd ganeti-maintd`` (filled in by the daemon issue)."""

from twisted.python import usage


class Options(usage.Options):
    synopsis = "[options]"


def makeService(config: Options):  # type: ignore[no-untyped-def]
    raise NotImplementedError("ganeti-maintd is under construction")
