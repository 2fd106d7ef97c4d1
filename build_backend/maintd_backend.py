"""PEP 517 build backend: setuptools, with ``pip install -e .`` in compat mode.

Twisted finds plugins only as modules in a ``twisted/plugins`` directory on
``sys.path`` (``twisted.plugin.pluginPackagePaths``).  setuptools' default
editable install (PEP 660, "lenient" mode) maps packages with an import
hook instead of putting the source tree on ``sys.path``: ``maintd`` imports,
but ``twistd --help`` lists no ganeti-* plugin.  Its ``compat`` mode adds
the tree to ``sys.path`` (a ``.pth`` file), which is what Twisted needs, so
this backend makes it the default for editable installs: a plain
``pip install -e .`` then works.  An explicit ``--config-settings
editable_mode=...`` still wins.  Everything else is setuptools' own.
"""

from __future__ import annotations

from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the PEP 517 hooks)

EDITABLE_MODE = "compat"


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    settings = dict(config_settings or {})
    if "editable_mode" not in settings and "editable-mode" not in settings:
        settings["editable_mode"] = EDITABLE_MODE
    return _setuptools.build_editable(wheel_directory, settings, metadata_directory)
