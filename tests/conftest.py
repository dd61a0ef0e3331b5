"""Checks before any test runs: the tests must exercise the source in this tree (tests/staleness.py)."""

from __future__ import annotations

import pytest

from staleness import stale_compiled_modules


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_compiled_modules()
    if stale:
        pytest.exit(f"compiled modules are older than their source: {', '.join(stale)}. Rebuild them with "
                    "`python3 setup.py build_ext --inplace` (or ./scripts/setup), then run the tests again.",
                    returncode=3)
