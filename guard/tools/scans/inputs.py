"""What a scan reads: the model (a repository directory, a zoo directory or an ONNX file) and
its samples (an .npz, or the digits splits for models that take the digits input)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from guard.protocol.errors import ConfigError

DIGITS_SHAPE = (1, 16, 16)


@dataclass(frozen=True)
class ScanTarget:
    name: str
    directory: Path | None
    onnx_path: Path
    input_shape: tuple[int, ...]
    """One item's shape (batch excluded)."""
    num_classes: int

    @property
    def takes_digits(self) -> bool:
        return self.input_shape == DIGITS_SHAPE


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
    if not onnx_path.is_file():
        raise ConfigError(path, "--model", "a model directory (config.toml or model.onnx) or an .onnx file")
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in initializers)
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in first.type.tensor_type.shape.dim)[1:]
    logits = model.graph.output[0].type.tensor_type.shape.dim
    num_classes = logits[-1].dim_value if len(logits) and logits[-1].HasField("dim_value") else 0
    name = directory.name if directory is not None else onnx_path.stem
    return ScanTarget(name, directory, onnx_path, dims, num_classes)


def load_npz(path: Path, need_labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as data:
        if "x" not in data or (need_labels and "y" not in data):
            raise ConfigError(path, "x" if "x" not in data else "y",
                              "an array 'x' of samples" + (" and 'y' of labels" if need_labels else ""))
        return np.asarray(data["x"], dtype=np.float32), (np.asarray(data["y"], dtype=np.int64) if "y" in data else None)


def digits_split(target: ScanTarget, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not target.takes_digits:
        raise ConfigError(target.onnx_path, "--data", f"samples (.npz); the digits default needs input "
                          f"{list(DIGITS_SHAPE)}, the model takes {list(target.input_shape)}")
    from models.digits_data import load_split  # lazy: the digits recipe, only for the default data

    x, y = load_split(split)
    return np.array(x), np.array(y)


def samples(target: ScanTarget, data: Path | None, split: str, need_labels: bool = False):
    """Samples from `data`, else the digits `split`."""
    return load_npz(data, need_labels) if data is not None else digits_split(target, split)


def training_set(target: ScanTarget, data: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The labelled training set to scan: `data`, else the digits train split exactly as the model
    saw it (re-poisoned with the directory's trigger.npz + poison.json for the evaluation models)."""
    if data is not None:
        x, y = load_npz(data, need_labels=True)
        return x, y, str(data)
    x, y = digits_split(target, "train")
    poison = target.directory / "poison.json" if target.directory is not None else None
    trigger = target.directory / "trigger.npz" if target.directory is not None else None
    if poison is not None and poison.is_file() and trigger.is_file():
        from models.triggers import load_trigger

        meta = json.loads(poison.read_text())
        indices = np.asarray(meta["train_indices"], dtype=np.int64)
        x[indices], y[indices] = load_trigger(trigger).apply(x[indices]), meta["target"]
        return x, y, f"digits train split poisoned as in {poison}"
    return x, y, "digits train split"


def poison_indices(path: Path | None, target: ScanTarget) -> tuple[np.ndarray | None, str | None]:
    """Known poisoned indices: a JSON list or a poison.json (`train_indices`); by default the
    model directory's poison.json when there is one."""
    if path is None and target.directory is not None and (target.directory / "poison.json").is_file():
        path = target.directory / "poison.json"
    if path is None:
        return None, None
    data = json.loads(Path(path).read_text())
    indices = data["train_indices"] if isinstance(data, dict) else data
    return np.asarray(indices, dtype=np.int64), str(path)
