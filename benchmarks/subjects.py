"""The models under test, each prepared once: its gateway repository (every configuration), the
1-row inputs every configuration receives, and a copy of the ONNX file for the peer server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from benchmarks import repositories, zoo
from guard.serving.model_config import ModelConfig, load_model_config

MODELS = ("digits", *(f"{a}_{p}" for a in zoo.ARCHITECTURES for p in zoo.PRECISIONS))


@dataclass
class Subject:
    name: str
    repository: Path
    """Gateway repository holding repositories.CONFIGURATIONS."""
    config: ModelConfig
    """The full_flag entry (thresholds, batching, backend threading)."""
    peer_onnx: Path
    """The model with only its client-visible outputs, for the peer server."""
    inputs: np.ndarray
    """1-row requests are cut from these rows."""

    @property
    def guard_rows(self) -> int:
        """Rows the full guard sends to the backend per original row (1 + K squeezed copies); the
        run prefers the gateway's own count (guard_backend_rows_total) when it has one."""
        return 1 + sum(_variants(d) for d in self.config.detection.detectors)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (1, *self.config.outputs[0].shape)


def _variants(table: dict) -> int:
    # Squeezers add one copy each; feature-space detectors read the original's features.
    return 1 if table["type"] in repositories.SQUEEZERS else 0


def _client_outputs_only(source: Path, target: Path, outputs: list[str]) -> Path:
    model = onnx.load(str(source))
    kept = [o for o in model.graph.output if o.name in outputs]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(target))
    return target


def prepare(name: str, work: Path, cache: Path, calibration_samples: int) -> Subject:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if name == "digits":
        from benchmarks.repositories import load_split

        full, inputs = repositories.digits_full(), np.asarray(load_split("test")[0], np.float32)
    else:
        architecture, precision = name.rsplit("_", 1)
        full = repositories.calibrated_full(zoo.model_file(cache, architecture, precision), cache, calibration_samples)
        inputs = zoo.sample_crops(16, seed=5)
    repository = repositories.build(full, work / name / "repository")
    config = load_model_config(repository / "full_flag")
    peer = _client_outputs_only(config.model_file, work / name / "peer.onnx", [o.name for o in config.outputs])
    return Subject(name, repository, config, peer, inputs)
