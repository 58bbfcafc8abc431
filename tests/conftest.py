"""Shared fixtures: the shipped demo repository, its held-out data, and live gateways on port 0.

The library's tests read the demo's files (its repository and its digits splits as .npz) but never
import the examples package: they test guard as a user installs it, without the demos' code."""

from __future__ import annotations

import contextlib
import re
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from guard.serving.background import BackgroundServer
from guard.serving.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[1]
DEMO_REPOSITORY = ROOT / "examples" / "guard_examples" / "repository"
DEMO_DATA = ROOT / "examples" / "guard_examples" / "data"
"""The digits splits (train, calibration, test) as the .npz files guard's commands read (x, y)."""


@lru_cache(maxsize=3)
def demo_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [N,1,16,16] in [0, 1], y int64 [N]) of a digits split, read-only and shared."""
    from guard.tools.evaluation.tensor_data import read_samples

    samples = read_samples(DEMO_DATA / f"{name}.npz")
    x, y = samples.x, samples.y
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@pytest.fixture(scope="session")
def held_out():
    x, y = demo_split("test")
    return np.ascontiguousarray(x), y


@contextlib.contextmanager
def running_gateway(repository: Path = DEMO_REPOSITORY, **settings):
    with BackgroundServer(ServerSettings(repository=repository, grpc_port=0, metrics_port=0, **settings)) as srv:
        yield srv


@pytest.fixture(scope="session")
def gateway():
    """The shipped demo repository, as configured (policy flag), on free ports."""
    with running_gateway() as srv:
        yield srv


def demo_detector_names(model: str = "digits") -> list[str]:
    from guard.serving.model_config import load_model_config

    return [d["name"] for d in load_model_config(DEMO_REPOSITORY / model).detection.detectors]


def copy_demo(tmp_path: Path, edit=None) -> Path:
    """A private copy of the demo repository; `edit(config_text) -> config_text` rewrites digits' config."""
    repository = tmp_path / "repository"
    shutil.copytree(DEMO_REPOSITORY, repository)
    if edit is not None:
        path = repository / "digits" / "config.toml"
        path.write_text(edit(path.read_text()))
    return repository


def set_key(text: str, key: str, value: str) -> str:
    """Replace the first `key = ...` line of a TOML text."""
    new, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
    assert count == 1, f"{key} not found"
    return new


@pytest.fixture(scope="session")
def bag_model():
    """A small real text classifier (tests/text/model.py), trained once per session."""
    from tests.text.model import train

    return train()
