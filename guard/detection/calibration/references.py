"""The clean calibration samples a model directory ships, so thresholds can be derived again where
the model is served. They are stored as the client sends them (before any preprocessing), with
their labels when known, in one .npz that loads without pickle: numeric inputs as arrays, BYTES
inputs (encoded images, text) as one concatenated byte buffer with each element's end offset."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.protocol.errors import ConfigError

_INPUT = "input:"
_BYTES, _ENDS = ":bytes", ":ends"


@dataclass(frozen=True)
class References:
    inputs: dict[str, np.ndarray]
    """Client inputs by name, rows along axis 0."""
    labels: np.ndarray | None = None
    """Class labels when known: detectors that learn per-class statistics use them, else the
    model's own predictions."""
    cameras: np.ndarray | None = None
    """Which camera each row comes from (strings), rows of a camera in time order: what per-camera
    baselines calibrate on (guard.detection.baselines.simulate)."""

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, index: np.ndarray) -> References:
        return References(
            {k: v[index] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[index],
            None if self.cameras is None else self.cameras[index],
        )

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for name, value in self.inputs.items():
            if value.dtype == object:
                items = [bytes(v) for v in value.reshape(-1)]
                arrays[f"{_INPUT}{name}{_BYTES}"] = np.frombuffer(b"".join(items), np.uint8)
                ends = np.cumsum([len(v) for v in items], dtype=np.int64)
                arrays[f"{_INPUT}{name}{_ENDS}"] = ends.reshape(value.shape)
            else:
                arrays[f"{_INPUT}{name}"] = value
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.cameras is not None:
            arrays["cameras"] = np.asarray(self.cameras, dtype=str)
        np.savez_compressed(path, allow_pickle=False, **arrays)  # plain arrays, as load() reads them

    @classmethod
    def load(cls, path: Path, where: Path | None = None) -> References:
        try:
            with np.load(path, allow_pickle=False) as data:
                inputs = {
                    k[len(_INPUT) :]: data[k]
                    for k in data.files
                    if k.startswith(_INPUT) and not k.endswith((_BYTES, _ENDS))
                }
                for key in (k for k in data.files if k.startswith(_INPUT) and k.endswith(_BYTES)):
                    name = key[len(_INPUT) : -len(_BYTES)]
                    buffer, ends = data[key].tobytes(), data[f"{_INPUT}{name}{_ENDS}"]
                    starts = np.concatenate([[0], ends.reshape(-1)[:-1]])
                    items = [buffer[a:b] for a, b in zip(starts, ends.reshape(-1))]
                    inputs[name] = np.array(items + [None], dtype=object)[:-1].reshape(ends.shape)
                labels = data["labels"] if "labels" in data.files else None
                cameras = data["cameras"] if "cameras" in data.files else None
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:  # missing, truncated, foreign
            raise ConfigError(
                where or path, "calibration.references", "an .npz written by `guard calibrate`", f"{path.name}: {exc}"
            ) from None
        if not inputs or len({len(v) for v in inputs.values()}) != 1:
            raise ConfigError(
                where or path,
                "calibration.references",
                "client inputs with one row count",
                {k: v.shape for k, v in inputs.items()},
            )
        return cls(inputs, labels, cameras)
