"""Data for the `digits` demo classifier: scikit-learn digits, upsampled to 16x16.

The train / calibration / test split is seeded and fixed forever: detector
thresholds are calibrated on `calibration` and results are reported on `test`,
so changing it would silently invalidate every downstream number.

The splits ship as .npz files (examples/guard_examples/data/<split>.npz, written by
`python -m guard_examples.digits_data --write`): the upsampling is float arithmetic, and
its last bits depend on the CPU's kernels, so deriving the splits on each host would give
every host slightly different data. The files are what every recipe, test and benchmark
reads; `derive_split` is how they were made, and a test checks they still agree.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from guard.api import read_samples
from guard_examples.paths import DATA

SPLIT_SEED = 20240501
SPLITS = ("train", "calibration", "test")
IMAGE_SIZE = 16
NUM_CLASSES = 10
# load_digits pixel values are integers 0..16.
PIXEL_MAX = 16.0


def preprocess(images_8x8: np.ndarray) -> np.ndarray:
    """Scale raw 8x8 digits (0..16) to [0, 1] and upsample to float32 [N,1,16,16]."""
    x = np.asarray(images_8x8, dtype=np.float32).reshape(-1, 1, 8, 8) / PIXEL_MAX
    t = F.interpolate(torch.from_numpy(x), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    # Bilinear interpolation of values in [0,1] stays in [0,1]; clip guards float rounding.
    return np.clip(t.numpy(), 0.0, 1.0).astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def _indices() -> dict[str, np.ndarray]:
    _, y = _raw()
    idx = np.arange(len(y))
    # 60 / 20 / 20: first carve off 40%, then halve it; both stratified by label.
    train, rest = train_test_split(idx, test_size=0.4, random_state=SPLIT_SEED, stratify=y)
    calibration, test = train_test_split(rest, test_size=0.5, random_state=SPLIT_SEED, stratify=y[rest])
    return {"train": np.sort(train), "calibration": np.sort(calibration), "test": np.sort(test)}


def split_indices() -> dict[str, np.ndarray]:
    """Indices into `load_digits()` order for each split (sorted, int64, copies)."""
    return {name: arr.astype(np.int64, copy=True) for name, arr in _indices().items()}


def _check(name: str) -> None:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")


def derive_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A split computed from scikit-learn's digits on this host (what the shipped files hold)."""
    _check(name)
    images, y = _raw()
    idx = _indices()[name]
    return preprocess(images[idx]), y[idx]


def write_splits(directory: Path = DATA) -> list[Path]:
    """Derive every split on this host and write it as `<split>.npz` (x, y) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SPLITS:
        x, y = derive_split(name)
        with (directory / f"{name}.npz").open("wb") as f:
            np.savez_compressed(f, x=x, y=y)
        paths.append(directory / f"{name}.npz")
    return paths


@lru_cache(maxsize=len(SPLITS))
def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    samples = read_samples(DATA / f"{name}.npz")
    x, y = samples.x, samples.y
    # Cached arrays are shared between callers, so make them read-only.
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (x float32 [N,1,16,16] in [0,1], y int64 [N]) for a named split (cached, read-only)."""
    _check(name)
    return _load(name)


def save_split(name: str, path: Path) -> Path:
    """Write a split as the .npz guard's commands read (x float32 [N,1,16,16] in [0,1], y int64)."""
    x, y = load_split(name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object keeps numpy from appending ".npz" to other suffixes
        np.savez(f, x=x, y=y)
    return path


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="the digits splits, as the .npz files every recipe reads")
    parser.add_argument("--write", action="store_true", help="derive the splits on this host and overwrite the files")
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args(argv)
    if args.write:
        for path in write_splits(args.out):
            print(f"digits_data: wrote {path}")
    else:
        for name in SPLITS:
            x, y = load_split(name)
            print(f"digits_data: {name} {x.shape[0]} rows from {DATA / (name + '.npz')}")


if __name__ == "__main__":
    main()
