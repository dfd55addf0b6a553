"""End-to-end tests' own marker: the long reliability runs."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: long reliability runs (crash, restarts, soak); CI runs them, -m 'not slow' skips them",
    )
