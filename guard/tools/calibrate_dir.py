"""`guard calibrate --model DIR`: calibrate a model directory whose config.toml already says what
the model is (any input kind, preprocessing, output kind, backend, detectors), from clean samples
as its clients send them (guard.tools.clean_data: an .npz, a folder of images, a video).

This is how camera models come under the guard: their recipe writes the contract, the
`[preprocess]` step and the detectors; calibration fits the detectors that learn, derives every
threshold with the code the server runs (guard.detection.calibration), and writes them back into
the same config.toml (its layout and comments kept), with the references and the fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tomlkit

from guard.backends import build_backend
from guard.backends.device import select_device
from guard.detection.baselines import BaselineSettings, simulate
from guard.detection.bounds import DEFAULT_CONFIDENCE
from guard.detection.calibration.derive import DecisionSettings, score
from guard.detection.calibration.fingerprint import runtime_fingerprint
from guard.detection.calibration.references import References
from guard.detection.detectors import build_detectors
from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config
from guard.serving.repository import check_against_backend
from guard.serving.runtime import build_pipeline
from guard.tools.calibrate_steps import Calibrated, check_and_report, derive_and_save
from guard.tools.query_distance import query_distance


def _split(references: References, holdout_fraction: float, seed: int) -> tuple[References, References | None]:
    if holdout_fraction <= 0:
        return references, None
    order = np.random.default_rng(seed).permutation(references.rows)
    cut = references.rows - int(round(references.rows * holdout_fraction))
    return references.take(np.sort(order[:cut])), references.take(np.sort(order[cut:]))


def _cameras(references: References) -> np.ndarray:
    """Which camera each row comes from (per-camera baselines need it of every sample)."""
    if references.cameras is None:
        raise ValueError("per-camera baselines need samples that say which camera each comes from")
    return references.cameras


def _split_in_time(references: References, holdout_fraction: float) -> tuple[References, References | None]:
    """Per camera: its first frames calibrate, its last `holdout_fraction` are held out (later
    frames of the same camera, as a deployment meets them; a random split would put neighbours of
    every held-out frame into calibration)."""
    if holdout_fraction <= 0:
        return references, None
    cameras = _cameras(references)
    first, last = [], []
    for camera in dict.fromkeys(cameras.tolist()):
        rows = np.flatnonzero(cameras == camera)
        cut = len(rows) - int(round(len(rows) * holdout_fraction))
        first.append(rows[:cut])
        last.append(rows[cut:])
    return references.take(np.concatenate(first)), references.take(np.concatenate(last))


def _held_out_flags(
    decision,
    holdout_scores: dict[str, np.ndarray],
    samples: References,
    holdout: References,
    judges: list[str],
    baseline: BaselineSettings,
) -> np.ndarray:
    """Held-out frames judged as the server judges them: each against its camera's baseline from
    that camera's warm-up frames (the first of its calibration frames)."""
    flags = []
    sample_cameras, held_cameras = _cameras(samples), _cameras(holdout)
    for camera in dict.fromkeys(held_cameras.tolist()):
        warm = np.flatnonzero(sample_cameras == camera)[: baseline.warmup]
        held = np.flatnonzero(held_cameras == camera)
        if len(warm) < baseline.warmup:
            continue  # never warmed up: its frames would be judged against the factory
        # Every detector the factory holds, monitors included: the server's baselines take in all
        # of a frame's scores (guard.serving.judging), and only the judges then decide.
        joined = {
            n: np.concatenate([decision.unmapped[n][warm], holdout_scores[n][held]]) for n in decision.factory.location
        }
        mapped, _, _ = simulate(joined, np.zeros(len(warm) + len(held)), baseline, decision.factory)
        flags.append(decision.flags(mapped, judges))
    return np.concatenate(flags) if flags else np.zeros(0, bool)


def calibrate_directory(
    directory: Path,
    samples: References,
    *,
    holdout_fraction: float = 0.3,
    holdout: References | None = None,
    fit_samples: References | None = None,
    folds: int = 5,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """Derive and write DIRECTORY's thresholds from clean `samples`; returns the report."""
    config = load_model_config(directory, calibrated=False)
    baseline = config.cameras.baseline
    if baseline is not None and samples.cameras is None:
        raise ConfigError(
            config.path,
            "cameras.baseline",
            "clean samples that say which camera each comes from "
            "(`guard calibrate --data` with one video or folder per camera)",
        )
    if holdout is None:
        samples, holdout = (
            _split_in_time(samples, holdout_fraction) if baseline else _split(samples, holdout_fraction, seed)
        )
    device = select_device(config.detection.device)
    detectors = [
        d.to(device)
        for d in build_detectors(
            config.path,
            config.detection.detectors,
            require_threshold=False,
            input_kind=config.guarded_kind,
            output_kind=config.detection.output_kind,
        )
    ]
    backend = build_backend(config.spec, config.backend, tuple(d.name for d in detectors if d.needs_features))
    try:
        check_against_backend(config, backend.signature(), f"the model ({backend.description})")

        def pipeline_for(chosen):
            return build_pipeline(config, backend, chosen, device)

        detection = config.detection
        calibrated = derive_and_save(
            directory,
            detectors,
            pipeline_for,
            samples,
            DecisionSettings(detection.ensemble.method, detection.target_fpr, confidence, folds, seed, baseline),
            fit_samples,
        )
        flagged = None
        if holdout is not None and holdout.rows:
            judges = [d.name for d in detectors if not d.monitor]
            scores, _ = score(pipeline_for(detectors), holdout, desc="held-out")
            if baseline is None:
                flagged = calibrated.decision.flags(scores, judges)
            else:
                flagged = _held_out_flags(calibrated.decision, scores, samples, holdout, judges, baseline)
        fingerprint = runtime_fingerprint(backend.description, device)
        queries = config.clients.queries.queries
        distance = (
            query_distance(pipeline_for([]), samples, config.outputs[0].name, queries)
            if queries.match == "distance"
            else None
        )
    finally:
        backend.close()
    _write_config(config.path, calibrated, fingerprint, distance)
    extra: dict[str, Any] = {} if baseline is None else {"cameras": len(set(_cameras(samples).tolist()))}
    if distance is not None:
        extra["query_distance"] = distance
    return check_and_report(directory, config.name, calibrated, fingerprint, flagged, **extra)


def _write_config(path: Path, calibrated: Calibrated, fingerprint: dict[str, Any], distance: float | None) -> None:
    """The thresholds, the ensemble's keys, the [calibration] table and, where queries are matched
    by distance, [clients] distance written into config.toml, its layout and comments kept."""
    decision = calibrated.decision
    document = tomlkit.parse(path.read_text())
    for table in document.get("detectors", []):
        table["threshold"] = decision.thresholds[table.get("name", table["type"])]
    if calibrated.ensemble:
        document["ensemble"].update(calibrated.ensemble)
    if decision.factory is not None:  # per-camera baselines: the factory they are measured against
        document["cameras"]["baseline"]["factory"] = decision.factory.as_table()
    mode = document.get("calibration", {}).get("mode", "recalibrate")
    document["calibration"] = calibrated.calibration_table(mode, fingerprint)
    if distance is not None:
        document["clients"]["distance"] = distance
    path.write_text(tomlkit.dumps(document))
