"""`guard calibrate`: bring any ONNX classifier under the guard from clean samples.

Copies the model into REPOSITORY/NAME/, scores the clean samples with the same pipeline the
server runs, sets every detector's threshold for the target false-positive rate (see
guard.detection.thresholds), writes config.toml, and reports the flag rate on clean samples it did not
calibrate on.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch
from tqdm import tqdm

from guard.backends.device import select_device
from guard.backends.onnx_graph import expose_features, onnx_signature
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.detection.detectors import Detector, FitData, build_detectors, squeezer_tables
from guard.detection.ensemble import METHODS, Fisher
from guard.detection.pipeline import GuardPipeline
from guard.detection.thresholds import fit_thresholds, flag_rates
from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config
from guard.serving.runtime import check_loadable

log = logging.getLogger("guard.tools.calibrate")


def score_samples(pipeline: GuardPipeline, x: np.ndarray, batch_size: int = 64,
                  desc: str = "scoring") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every detector's scores and the model's logits for x, batch by batch."""
    scores: dict[str, list[np.ndarray]] = {d.name: [] for d in pipeline.detectors}
    logits = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(x), batch_size), desc=desc, unit="batch", leave=False):
            result = pipeline.run({pipeline.guarded_input: np.ascontiguousarray(x[start:start + batch_size])})
            for name, value in result.scores.items():
                scores[name].append(value)
            logits.append(result.outputs[pipeline.logits_output])
    return {k: np.concatenate(v) for k, v in scores.items()}, np.concatenate(logits)


def _split(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = n - int(round(n * holdout_fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])


def calibrate_model(onnx_path: Path, name: str, repository: Path, x: np.ndarray, y: np.ndarray | None = None,
                    *, target_fpr: float = 0.05, holdout: tuple[np.ndarray, np.ndarray | None] | None = None,
                    holdout_fraction: float = 0.3, seed: int = 0, value_range: tuple[float, float] = (0.0, 1.0),
                    detectors: list[dict[str, Any]] | None = None, policy: str = "flag",
                    batching: dict[str, int] | None = None, backend: dict[str, Any] | None = None,
                    fit_data: tuple[np.ndarray, np.ndarray | None] | None = None,
                    features: str | None = None, ensemble: str = "union") -> dict[str, Any]:
    """Write REPOSITORY/NAME/{model.onnx,config.toml,calibration.json}; returns the report.

    x are clean samples; unless `holdout` (x, y) is given, a seeded `holdout_fraction` of them is
    kept out of calibration to measure the flag rate on clean data the thresholds never saw.
    Detectors that learn clean statistics fit on `fit_data` (x, y), or else on a seeded half of
    x, and thresholds are set on the rest. `features` names the tensor feature-space detectors
    read (default: the input of the model's last Gemm/MatMul). `ensemble` is how the detectors
    combine (guard.detection.ensemble): "union" thresholds share the budget; "fisher" and "omnibus" get
    thresholds on the combined statistics and each detector its own threshold at the target, for
    attribution only.
    """
    if ensemble not in METHODS:
        raise ConfigError(Path("(calibrate)"), "ensemble", "one of " + ", ".join(METHODS), ensemble)
    inputs, outputs = onnx_signature(onnx_path)
    if len(inputs) != 1:
        raise ConfigError(onnx_path, "(model inputs)", "exactly one input for `guard calibrate` "
                          f"(found {[i.name for i in inputs]}); write config.toml by hand")
    spec = inputs[0]
    if holdout is None:
        cal_idx, hold_idx = _split(len(x), holdout_fraction, seed)
        holdout = (x[hold_idx], None if y is None else y[hold_idx])
        x, y = x[cal_idx], None if y is None else y[cal_idx]
    x, x_hold = x.astype(np.float32), holdout[0].astype(np.float32)
    if x.ndim != len(spec.shape) + 1 or any(d not in (-1, s) for d, s in zip(spec.shape, x.shape[1:])):
        raise ConfigError(onnx_path, spec.name, f"samples of shape [N, {', '.join(map(str, spec.shape))}]",
                          list(x.shape))
    low, high = value_range
    if x.min() < low or x.max() > high:
        raise ConfigError(onnx_path, "range", f"clean samples within [{low}, {high}]",
                          [float(x.min()), float(x.max())])

    target = repository / name
    target.mkdir(parents=True, exist_ok=True)
    model_file = target / "model.onnx"
    if onnx_path.resolve() != model_file.resolve():
        shutil.copyfile(onnx_path, model_file)

    tables = detectors if detectors is not None else squeezer_tables()
    found = build_detectors(target / "config.toml", tables, require_threshold=False)
    features_name = None
    if any(d.needs_features for d in found):
        features_name = expose_features(model_file, model_file, features)
    client_outputs = [o for o in outputs if o.name != features_name]
    engine = OnnxRuntimeBackend.open(model_file, **{k: v for k, v in (backend or {}).items()
                                                     if k in ("intra_op_threads", "inter_op_threads")})
    logits_name = client_outputs[0].name
    device = select_device("auto")

    learners = [d for d in found if type(d).fit is not Detector.fit]
    if learners:
        if fit_data is None:  # never fit and set thresholds on the same samples
            fit_idx, thr_idx = _split(len(x), 0.5, seed + 1)
            fit_data = (x[fit_idx], None if y is None else y[fit_idx])
            x, y = x[thr_idx], None if y is None else y[thr_idx]
        fx = np.ascontiguousarray(fit_data[0], dtype=np.float32)
        wanted = [logits_name] + ([features_name] if features_name else [])
        raw = [engine.infer({spec.name: fx[i:i + 256]}, wanted) for i in range(0, len(fx), 256)]
        merged = {k: np.concatenate([r[k] for r in raw]) for k in wanted}
        sample = FitData(fx, fit_data[1], merged[logits_name], merged.get(features_name))
        for detector in learners:
            detector.fit(sample)
            detector.save(target)
    for detector in found:
        detector.to(device)
    pipeline = GuardPipeline(engine, found, guarded_input=spec.name, logits_output=logits_name,
                             output_names=[o.name for o in client_outputs], device=device,
                             features_output=features_name)
    cal_scores, cal_logits = score_samples(pipeline, x, desc="calibration")
    hold_scores, hold_logits = score_samples(pipeline, x_hold, desc="held-out")
    judges = {d.name for d in found if not d.monitor}
    judged_cal = {k: v for k, v in cal_scores.items() if k in judges}
    # Alone at the target: monitors (so their score/threshold reads like the others') and, under
    # Fisher, every detector (its threshold then only names who fired).
    alone = {d.name: fit_thresholds({d.name: cal_scores[d.name]}, target_fpr).thresholds[d.name] for d in found}
    combiner, ensemble_table = None, {"method": ensemble}
    if ensemble in ("fisher", "omnibus"):
        combiner = Fisher.fit(judged_cal, target_fpr, omnibus=ensemble == "omnibus")
        combiner.save(target / "ensemble.npz")
        ensemble_table.update(references="ensemble.npz", threshold=combiner.threshold)
        if combiner.min_p_threshold is not None:
            ensemble_table["min_p_threshold"] = combiner.min_p_threshold
        thresholds = alone
        cal_union = float((combiner.ratio(judged_cal) >= 1.0).mean())
        hold_union = float((combiner.ratio(hold_scores) >= 1.0).mean())
    else:
        fit = fit_thresholds(judged_cal, target_fpr)
        thresholds = {**alone, **fit.thresholds}
        cal_union = fit.calibration_fpr
        _, hold_union = flag_rates({k: v for k, v in hold_scores.items() if k in judges}, fit.thresholds)
    hold_per_detector, _ = flag_rates(hold_scores, thresholds)

    config = {
        "name": name, "version": "1", "platform": "onnxruntime_onnx", "policy": policy, "target_fpr": target_fpr, "guarded_input": spec.name, "logits_output": logits_name,
        **({"features_output": features_name} if features_name else {}),
        "inputs": [{"name": spec.name, "datatype": spec.datatype, "shape": list(x.shape[1:]),
                    "range": [float(low), float(high)], "layout": "NCHW" if x.ndim == 4 else ""}],
        "outputs": [{"name": o.name, "datatype": o.datatype,
                     "shape": [d if d != -1 else s for d, s in zip(o.shape, cal_logits.shape[1:])]
                     if o.name == logits_name else list(o.shape)} for o in client_outputs],
        "batching": batching or {"max_batch_size": 32, "max_queue_delay_microseconds": 0,
                                 "max_queue_size": 1024},
        "backend": {"kind": "onnxruntime", "model_file": model_file.name,
                    **(backend or {"intra_op_threads": 1, "inter_op_threads": 1})},
        "detectors": [{**d.to_config(), "threshold": thresholds[d.name]} for d in found],
        "ensemble": ensemble_table,
    }
    header = (f"# Written by `guard calibrate` from {len(x)} clean samples (target FPR {target_fpr}).\n"
              "# Thresholds: guard/calibration.py; regenerate rather than edit them by hand.\n")
    (target / "config.toml").write_text(header + tomli_w.dumps(config))
    # What was written must load and agree with the model file, as the server will check it.
    check_loadable(load_model_config(target))

    report: dict[str, Any] = {
        "model": name, "target_fpr": target_fpr, "n_calibration": len(x), "n_holdout": len(x_hold),
        "ensemble": ensemble_table, "thresholds": thresholds, "calibration_fpr": cal_union,
        "calibration_fpr_per_detector": flag_rates(cal_scores, thresholds)[0],
        "monitors": sorted(d.name for d in found if d.monitor),
        "holdout_fpr": hold_union, "holdout_fpr_per_detector": hold_per_detector,
    }
    if y is not None:
        report["calibration_accuracy"] = float((cal_logits.argmax(1) == y).mean())
    if holdout[1] is not None:
        report["holdout_accuracy"] = float((hold_logits.argmax(1) == holdout[1]).mean())
    (target / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("calibrated %s: held-out clean flag rate %.3f (target %.3f)", name, hold_union, target_fpr)
    return report
