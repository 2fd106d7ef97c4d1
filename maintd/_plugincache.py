"""Refresh Twisted's plugin dropin cache so ``twistd`` sees our plugins.

Run as ``python -m maintd._plugincache`` after installing (the Makefile does);
harmless to run again.  Without it twistd still finds the plugins, but the
first run rewrites the cache (and warns if it cannot).
"""

from twisted.plugin import IPlugin, getPlugins


def refresh() -> list[str]:
    from twisted import plugins

    return sorted(getattr(p, "tapname", repr(p)) for p in getPlugins(IPlugin, plugins))


if __name__ == "__main__":
    names = refresh()
    missing = {"ganeti-maintd", "ganeti-sim"} - set(names)
    if missing:
        raise SystemExit(f"twistd plugins not found: {sorted(missing)}")
    print("twistd plugins:", ", ".join(n for n in names if n.startswith("ganeti")))
