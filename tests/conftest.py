"""Checks before any test runs: the tests must exercise the source in this tree (tests/staleness.py).
And the clean-install check, started in the background once the tests are collected (tests/clean_build.py)."""

from __future__ import annotations

import pytest

import clean_build
from staleness import stale_compiled_modules


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_compiled_modules()
    if stale:
        pytest.exit(f"compiled modules are older than their source: {', '.join(stale)}. Rebuild them with "
                    "`python3 setup.py build_ext --inplace` (or ./scripts/setup), then run the tests again.",
                    returncode=3)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    clean_build.last(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    clean_build.start(session.config, session.items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    clean_build.stop(session.config)
