"""Only the optional C part of pgmux lives here; everything else is in pyproject.toml.

pgmux._speedups does the per-query text scan of the forwarding path in C (see its header). It is
optional: where it cannot be compiled, pgmux runs the pure-Python version of the same scan, and
tests/unit/test_speedups.py fails, so a machine that should have it notices.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pgmux._speedups", ["src/pgmux/_speedups.c"], optional=True)])
