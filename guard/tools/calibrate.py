"""`guard calibrate`: bring any ONNX classifier under the guard from clean samples.

Copies the model into REPOSITORY/NAME/, derives every detector's threshold (and the ensemble's
statistics) from the clean samples with the code the server runs (guard.detection.calibration),
writes config.toml, the clean references and the runtime fingerprint (so a host that computes
differently derives them again), and reports the flag rate on clean samples it did not calibrate on,
with an upper confidence bound.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import tomlkit

from guard.backends.device import select_device
from guard.backends.onnx_graph import expose_features, find_feature_tensor, onnx_signature
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.detection.bounds import DEFAULT_CONFIDENCE
from guard.detection.calibration.derive import DecisionSettings, per_detector_rates, score
from guard.detection.calibration.fingerprint import runtime_fingerprint
from guard.detection.calibration.references import References
from guard.detection.detectors import Detector, build_detectors, squeezer_tables
from guard.detection.pipeline import GuardPipeline
from guard.detection.settings import METHODS
from guard.protocol.errors import ConfigError
from guard.tools.calibrate_steps import check_and_report, derive_and_save

log = logging.getLogger("guard.tools.calibrate")


@dataclass
class CalibrationOptions:
    target_fpr: float = 0.05
    confidence: float = DEFAULT_CONFIDENCE
    """Thresholds keep the clean flag rate on new inputs at most target_fpr with this probability."""
    detectors: list[dict[str, Any]] | None = None
    """[[detectors]] tables; None: detector_tables()'s defaults, the strongest general set: the
    squeezers, the feature-space detector and the confidence margin. The squeezers alone miss most
    backdoor triggers (a trigger is a feature the model learned, not noise a squeeze removes);
    Mahalanobis distance on the penultimate features sees triggered inputs land in a class whose
    features they do not share. STRIP stays opt-in: it costs a backend row per blend."""
    ensemble: str = "omnibus"
    """How detectors combine: union, fisher or omnibus (guard.detection.ensemble)."""
    holdout: tuple[np.ndarray, np.ndarray | None] | None = None
    """Clean (x, y) to measure the flag rate on; None: a seeded holdout_fraction of the samples."""
    holdout_fraction: float = 0.3
    fit_data: tuple[np.ndarray, np.ndarray | None] | None = None
    """Clean (x, y) that learning detectors fit on; None: they fit on the calibration samples and
    their thresholds come from cross-fitted scores (`folds`)."""
    folds: int = 5
    seed: int = 0
    value_range: tuple[float, float] = (0.0, 1.0)
    policy: str = "flag"
    batching: dict[str, int] = field(
        default_factory=lambda: {"max_batch_size": 32, "max_queue_delay_microseconds": 0, "max_queue_size": 1024}
    )
    backend: dict[str, Any] = field(default_factory=lambda: {"intra_op_threads": 1, "inter_op_threads": 1})
    """ONNX Runtime keys of the [backend] table (guard.backends.onnxruntime)."""
    features: str | None = None
    """The tensor feature-space detectors read (default: the input of the last Gemm/MatMul)."""


def detector_tables(
    onnx_path: Path,
    bit_depths: list[int] | None = None,
    medians: list[int] | None = None,
    mahalanobis: bool | None = None,
    confidence_margin: bool = True,
    strip: int | None = None,
    features: str | None = None,
) -> list[dict[str, Any]]:
    """The [[detectors]] `guard calibrate`'s flags ask for. mahalanobis None: on when the model has
    penultimate features to read (a linear head, or `features`); True insists (and fails without)."""
    tables = squeezer_tables(bit_depths, medians)
    if mahalanobis is None and features is None:
        try:
            find_feature_tensor_of(onnx_path)
            mahalanobis = True
        except ConfigError as exc:
            log.warning("no penultimate features to read (%s): calibrating without mahalanobis", exc.message)
            mahalanobis = False
    if mahalanobis or (mahalanobis is None and features is not None):
        tables.append({"name": "mahalanobis", "type": "mahalanobis"})
    if confidence_margin:
        tables.append({"name": "confidence_margin", "type": "confidence_margin"})
    if strip:
        tables.append({"name": "strip", "type": "strip", "n": strip})
    return tables


def _split(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = n - int(round(n * holdout_fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])


def _detectors(options: CalibrationOptions, model_file: Path, path: Path) -> list[Detector]:
    tables = (
        options.detectors if options.detectors is not None else detector_tables(model_file, features=options.features)
    )
    return build_detectors(path, tables, require_threshold=False)


def find_feature_tensor_of(model_file: Path) -> str:
    import onnx

    return find_feature_tensor(onnx.load(str(model_file), load_external_data=False))


def calibrate_model(
    onnx_path: Path,
    name: str,
    repository: Path,
    x: np.ndarray,
    y: np.ndarray | None = None,
    options: CalibrationOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Write REPOSITORY/NAME/{model.onnx, config.toml, references.npz, calibration.json}; returns
    the report. `overrides` are CalibrationOptions fields."""
    unknown = set(overrides) - {f.name for f in fields(CalibrationOptions)}
    if unknown:
        raise TypeError(f"unknown calibration options {sorted(unknown)}")
    o = replace(options or CalibrationOptions(), **overrides)
    if o.ensemble not in METHODS:
        raise ConfigError(Path("(calibrate)"), "ensemble", "one of " + ", ".join(METHODS), o.ensemble)
    inputs, outputs = onnx_signature(onnx_path)
    if len(inputs) != 1:
        raise ConfigError(
            onnx_path,
            "(model inputs)",
            f"exactly one input for `guard calibrate` (found {[i.name for i in inputs]}); write config.toml by hand",
        )
    spec = inputs[0]
    x = np.asarray(x, np.float32)
    if x.ndim != len(spec.shape) + 1 or any(d not in (-1, s) for d, s in zip(spec.shape, x.shape[1:])):
        raise ConfigError(
            onnx_path, spec.name, f"samples of shape [N, {', '.join(map(str, spec.shape))}]", list(x.shape)
        )
    low, high = o.value_range
    if x.min() < low or x.max() > high:
        raise ConfigError(onnx_path, "range", f"clean samples within [{low}, {high}]", [float(x.min()), float(x.max())])
    holdout = o.holdout
    if holdout is None:
        cal_idx, hold_idx = _split(len(x), o.holdout_fraction, o.seed)
        holdout = (x[hold_idx], None if y is None else y[hold_idx])
        x, y = x[cal_idx], None if y is None else y[cal_idx]

    target = repository / name
    target.mkdir(parents=True, exist_ok=True)
    model_file = target / "model.onnx"
    if onnx_path.resolve() != model_file.resolve():
        shutil.copyfile(onnx_path, model_file)
    found = _detectors(o, model_file, target / "config.toml")
    features_name = (
        expose_features(model_file, model_file, o.features) if any(d.needs_features for d in found) else None
    )
    client_outputs = [out for out in outputs if out.name != features_name]
    engine = OnnxRuntimeBackend.open(
        model_file, **{k: v for k, v in o.backend.items() if k in ("intra_op_threads", "inter_op_threads")}
    )
    device = select_device("auto")
    for detector in found:
        detector.to(device)

    def pipeline_for(detectors: list[Detector]) -> GuardPipeline:
        return GuardPipeline(
            engine,
            detectors,
            guarded_input=spec.name,
            logits_output=client_outputs[0].name,
            output_names=[out.name for out in client_outputs],
            device=device,
            features_output=features_name,
        )

    references = References({spec.name: x}, y)
    learn_from = (
        None if o.fit_data is None else References({spec.name: np.asarray(o.fit_data[0], np.float32)}, o.fit_data[1])
    )
    calibrated = derive_and_save(
        target,
        found,
        pipeline_for,
        references,
        DecisionSettings(o.ensemble, o.target_fpr, o.confidence, o.folds, o.seed),
        learn_from,
    )
    decision = calibrated.decision
    fingerprint = runtime_fingerprint(engine.description, device)

    judges = [d.name for d in found if not d.monitor]
    hold_scores, hold_logits = score(
        pipeline_for(found), References({spec.name: np.asarray(holdout[0], np.float32)}, holdout[1]), desc="held-out"
    )
    ensemble_table: dict[str, Any] = {"method": o.ensemble, **calibrated.ensemble}
    config = {
        "name": name,
        "version": "1",
        "platform": "onnxruntime_onnx",
        "policy": o.policy,
        "target_fpr": o.target_fpr,
        "guarded_input": spec.name,
        "logits_output": client_outputs[0].name,
        **({"features_output": features_name} if features_name else {}),
        "inputs": [
            {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": list(spec.shape),  # free dims stay free
                "range": [float(low), float(high)],
                "layout": "NCHW" if x.ndim == 4 else "",
            }
        ],
        "outputs": [
            {
                "name": out.name,
                "datatype": out.datatype,
                "shape": [d if d != -1 else s for d, s in zip(out.shape, hold_logits.shape[1:])]
                if out.name == client_outputs[0].name
                else list(out.shape),
            }
            for out in client_outputs
        ],
        "batching": o.batching,
        "backend": dict(o.backend),  # kind onnxruntime and model_file model.onnx: the defaults
        "detectors": [d.to_config() for d in found],
        "ensemble": ensemble_table,
        "calibration": calibrated.calibration_table("recalibrate", fingerprint),
    }
    header = (
        f"# Written by `guard calibrate` from {references.rows} clean samples (target FPR {o.target_fpr}).\n"
        "# Thresholds: guard/detection/calibration; regenerate rather than edit them by hand.\n"
    )
    (target / "config.toml").write_text(header + tomlkit.dumps(config))
    extra: dict[str, Any] = {"holdout_fpr_per_detector": per_detector_rates(hold_scores, decision.thresholds)}
    if holdout[1] is not None:
        extra["holdout_accuracy"] = float((hold_logits.argmax(1) == holdout[1]).mean())
    return check_and_report(target, name, calibrated, fingerprint, decision.flags(hold_scores, judges), **extra)
