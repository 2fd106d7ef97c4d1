"""Command line conventions shared by every console command and twistd plugin.

A usage error (unknown option, bad value, missing argument) is ONE line on
stderr, ``PROG: MESSAGE (see PROG --help)``, and exit status
:data:`EXIT_USAGE` (2): no page of usage text with the error at its end.

* :class:`ArgumentParser`: ``argparse.ArgumentParser`` with that ``error``.
* :func:`one_line_usage`: wraps a ``twisted.python.usage.Options`` class so
  that ``parseOptions`` does the same.  Used for the twistd plugins' option
  classes (``twistd ganeti-maintd``, ``twistd ganeti-sim``); the plain
  classes keep raising :class:`usage.UsageError` for tests and for the
  launcher (:mod:`maintd.admin.launcher`), which reports it the same way.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, TextIO, TypeVar, cast

from twisted.python import usage

#: Exit status of a usage error (as argparse and most Unix tools).
EXIT_USAGE = 2

_O = TypeVar("_O", bound=usage.Options)


def usage_line(prog: str, message: object) -> str:
    """The one line printed for a usage error (with its newline)."""
    text = " ".join(str(message).split()) or "usage error"
    return f"{prog}: {text} (see {prog} --help)\n"


def usage_exit(prog: str, message: object, err: TextIO | None = None) -> NoReturn:
    """Print :func:`usage_line` on ``err`` (stderr) and exit :data:`EXIT_USAGE`."""
    (err or sys.stderr).write(usage_line(prog, message))
    raise SystemExit(EXIT_USAGE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2)."""

    def error(self, message: str) -> NoReturn:
        usage_exit(self.prog, message)


def one_line_usage(cls: type[_O], prog: str) -> type[_O]:
    """A subclass of the ``usage.Options`` class ``cls`` whose
    ``parseOptions`` reports a :class:`usage.UsageError` as one line on stderr
    and exits 2 (twistd itself would print the whole usage on stdout and
    exit 1).  A subclass may set ``usage_prog`` to name another program."""

    def parseOptions(self: Any, options: Any = None) -> None:  # noqa: N802
        try:
            cls.parseOptions(self, options)
        except usage.UsageError as e:
            usage_exit(getattr(self, "usage_prog", None) or prog, e)

    sub = type(cls.__name__, (cls,), {"parseOptions": parseOptions, "__module__": cls.__module__})
    return cast("type[_O]", sub)
