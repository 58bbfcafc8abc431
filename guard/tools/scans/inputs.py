"""What a scan reads: the model (a repository directory, a directory with model.onnx or an ONNX
file) and its samples, always from the .npz files named on the command line: guard runs as an
installed wheel, so there is no demo data to fall back on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np
import onnx

from guard.protocol.errors import ConfigError


@dataclass(frozen=True)
class ScanTarget:
    name: str
    directory: Path | None
    onnx_path: Path
    input_shape: tuple[int, ...]
    """One item's shape (batch excluded)."""
    num_classes: int


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_model(path: Path) -> ScanTarget:
    """A model directory (with config.toml, or just model.onnx) or an .onnx file."""
    path = Path(path)
    directory = path if path.is_dir() else None
    if directory is not None:
        if (directory / "config.toml").is_file():
            from guard.serving.model_config import load_model_config

            onnx_path = load_model_config(directory).model_file
        else:
            onnx_path = directory / "model.onnx"
    else:
        onnx_path = path
    if onnx_path is None or not onnx_path.is_file():  # None: a config whose backend has no model file
        raise ConfigError(path, "--model", "a model directory (config.toml or model.onnx) or an .onnx file")
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in initializers)
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in first.type.tensor_type.shape.dim)[1:]
    logits = model.graph.output[0].type.tensor_type.shape.dim
    num_classes = logits[-1].dim_value if len(logits) and logits[-1].HasField("dim_value") else 0
    name = directory.name if directory is not None else onnx_path.stem
    return ScanTarget(name, directory, onnx_path, dims, num_classes)


@overload
def load_npz(path: Path, target: ScanTarget, need_labels: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def load_npz(path: Path, target: ScanTarget, need_labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]: ...
def load_npz(path: Path, target: ScanTarget, need_labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """x (float32, one row per sample, the model's input shape; or str, one text per sample, for a
    text model directory) and, when present or needed, y."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(path, "(file)", f"an .npz with an array 'x' ({exc})") from None
    with data:
        files = data.files if hasattr(data, "files") else []
        if "x" not in files or (need_labels and "y" not in files):
            raise ConfigError(
                path,
                "x" if "x" not in files else "y",
                "an array 'x' of samples" + (" and 'y' of labels" if need_labels else ""),
            )
        x = np.asarray(data["x"])
        y = np.asarray(data["y"], dtype=np.int64) if "y" in files else None
    if x.dtype.kind == "U":  # texts, for a text model directory (its features come through the guard's pipeline)
        if x.ndim != 1 or not len(x) or target.directory is None or not (target.directory / "config.toml").is_file():
            raise ConfigError(path, "x", "texts [N] for a text model directory (config.toml with features_output)")
        if y is not None and y.shape != (len(x),):
            raise ConfigError(path, "y", f"{len(x)} labels, one per sample", list(y.shape))
        return x, y
    x = x.astype(np.float32)
    shape = target.input_shape
    if x.ndim != len(shape) + 1 or len(x) == 0 or any(d not in (-1, s) for d, s in zip(shape, x.shape[1:])):
        raise ConfigError(path, "x", f"samples [N, {', '.join(map(str, shape))}] for {target.onnx_path}", list(x.shape))
    if y is not None and y.shape != (len(x),):
        raise ConfigError(path, "y", f"{len(x)} labels, one per sample", list(y.shape))
    return x, y


def poison_indices(path: Path | None, samples: int) -> np.ndarray | None:
    """Known poisoned indices into the scanned training set (of `samples` rows): a JSON list, or a
    poison.json (`train_indices`) as examples/guard_examples/backdoor.py writes it."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(path, "(file)", f"a JSON list of indices or an object with train_indices ({exc})") from None
    key = "train_indices" if isinstance(data, dict) else "(list)"
    indices = data.get("train_indices") if isinstance(data, dict) else data
    if not isinstance(indices, list) or not all(isinstance(i, int) and 0 <= i < samples for i in indices):
        raise ConfigError(path, key, f"a list of indices into the {samples} samples of --data")
    return np.asarray(indices, dtype=np.int64)
