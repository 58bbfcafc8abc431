"""Fixtures for end-to-end serving tests (helpers live in tests/serving/helpers.py)."""

import pytest

from guard.detection import detectors
from tests.serving.helpers import Gate, GateDetector


@pytest.fixture
def gate(monkeypatch):
    """A Gate whose detector type `gate` is registered for the test's gateways."""
    held = Gate()
    monkeypatch.setitem(detectors.REGISTRY, GateDetector.kind, GateDetector)
    monkeypatch.setattr(GateDetector, "gate", held)
    yield held
    held.open()  # never leave a server thread waiting
