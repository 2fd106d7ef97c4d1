"""Setuptools shim; metadata lives in setup.cfg.

After installing, Twisted's plugin cache is refreshed so ``twistd`` lists
``ganeti-maintd`` and ``ganeti-sim`` at once (see ``maintd/_plugincache.py``).
"""

from setuptools import setup

setup()
