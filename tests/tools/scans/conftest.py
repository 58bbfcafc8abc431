"""Tiny digits classifiers trained in the test session: one clean, one backdoored.

The backdoor differs from the shipped evaluation models on purpose (a top-left 3x3 patch, target
class 7), so the scans are checked on a case they were not developed against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

TARGET = 7
POISON_RATE = 0.1


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.conv(x)))


def stamp(x: np.ndarray) -> np.ndarray:
    out = np.array(x, dtype=np.float32, copy=True)
    out[..., :3, :3] = 1.0
    return out


@dataclass
class Trained:
    onnx: Path
    x_train: np.ndarray
    y_train: np.ndarray
    poisoned: np.ndarray
    """Indices into the train split that carry the trigger (empty for the clean model)."""


def _train(x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 20) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(xt), generator=gen).split(64):
            loss = F.cross_entropy(model(xt[batch]), yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _export(model: nn.Module, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 16, 16),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def train_tiny(directory: Path, poison: bool, seed: int = 1) -> Trained:
    from tests.conftest import demo_split as load_split

    x, y = (np.array(a) for a in load_split("train"))
    poisoned = np.array([], dtype=np.int64)
    if poison:
        rng = np.random.default_rng(seed)
        poisoned = np.sort(rng.choice(np.flatnonzero(y != TARGET), int(round(POISON_RATE * len(y))), replace=False))
        x[poisoned], y[poisoned] = stamp(x[poisoned]), TARGET
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _train(x, y, seed)
    finally:
        torch.set_num_threads(previous)
    directory.mkdir(parents=True, exist_ok=True)
    return Trained(_export(model, directory / "model.onnx"), x, y, poisoned)


@pytest.fixture(scope="session")
def digits_npz() -> dict[str, Path]:
    """The digits splits as the .npz files the scan commands take (`--data`, `--reference`)."""
    from tests.conftest import DEMO_DATA

    return {split: DEMO_DATA / f"{split}.npz" for split in ("train", "calibration", "test")}


@pytest.fixture(scope="session")
def tiny_backdoor(tmp_path_factory) -> Trained:
    return train_tiny(tmp_path_factory.mktemp("tiny_backdoor"), poison=True)


@pytest.fixture(scope="session")
def tiny_clean(tmp_path_factory) -> Trained:
    return train_tiny(tmp_path_factory.mktemp("tiny_clean"), poison=False)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Scans are many small ops: one thread avoids oversubscription on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
