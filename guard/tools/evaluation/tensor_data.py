"""A tensor plan's data: .npz files with x (float32 in [0, 1], [N, ...]) and integer labels y, the
format every split of a tensor plan has and `guard calibrate --data` reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.protocol.errors import ConfigError
from guard.protocol.settings import TableReader


@dataclass(frozen=True)
class Split:
    path: Path
    x: np.ndarray
    y: np.ndarray


def load_split(reader: TableReader, key: str) -> Split:
    """x float32 in [0, 1] and integer labels y of the same length, from the .npz the key names."""
    path = reader.file(key, what="an .npz with arrays x and y", anywhere=True)
    try:
        return read_samples(path, f"{reader.path}: {reader.key(key)}")
    except (OSError, ValueError) as exc:
        raise reader.fail(key, f"an .npz with arrays x and y ({exc})", str(path)) from None


def read_samples(path: Path, named_by: str = "") -> Split:
    """Labelled samples from an .npz: x float32 in [0, 1], [N, ...], and N integer labels y.

    The format every split of a plan has, and `guard calibrate --data` reads; a problem with the
    arrays is a ConfigError naming the file and the array (`named_by` says who pointed at the file).
    OSError or ValueError where the file is not an .npz at all.
    """
    with np.load(path, allow_pickle=False) as data:
        if not hasattr(data, "files") or "x" not in data.files or "y" not in data.files:
            raise ConfigError(
                path,
                "x" if not hasattr(data, "files") or "x" not in data.files else "y",
                "arrays x and y" + (f" (named by {named_by})" if named_by else ""),
            )
        x, y = np.asarray(data["x"]), np.asarray(data["y"])
    if x.dtype != np.float32:
        raise ConfigError(path, "x", "float32 samples", str(x.dtype))
    if x.ndim < 2 or len(x) == 0 or not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise ConfigError(
            path,
            "x",
            "a non-empty batch [N, ...] of finite values in [0, 1]",
            list(x.shape) if x.ndim < 2 or len(x) == 0 else None,
        )
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise ConfigError(path, "y", f"{len(x)} integer labels (one per row of x)", f"{y.dtype} {list(y.shape)}")
    return Split(path, x, y.astype(np.int64))
