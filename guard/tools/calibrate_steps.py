"""What both forms of `guard calibrate` do once a model's detectors and pipeline exist (from an ONNX
file, guard.tools.calibrate; from a model directory, guard.tools.calibrate_dir), in one copy so the
two cannot drift: fit the detectors that learn, derive every threshold and the ensemble with the
code the server runs (guard.detection.calibration), save them beside config.toml, and, once the
caller has written config.toml, check it loads as the server will and report the held-out clean
flag rate with its upper confidence bound.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from guard.detection.bounds import upper_bound
from guard.detection.calibration.derive import (
    Decision,
    DecisionSettings,
    PipelineFor,
    derive,
    fit_data,
    fit_learners,
    per_detector_rates,
)
from guard.detection.calibration.fingerprint import fingerprint_id
from guard.detection.calibration.references import References
from guard.detection.detectors import Detector
from guard.serving.model_config import load_model_config
from guard.serving.runtime import check_loadable

log = logging.getLogger("guard.tools.calibrate")

REFERENCES = "references.npz"
ENSEMBLE = "ensemble.npz"


@dataclass(frozen=True)
class Calibrated:
    """What `derive_and_save` derived and wrote."""

    decision: Decision
    settings: DecisionSettings
    """As derived: `folds` is 0 where the learners fitted on other samples than the references."""
    rows: int
    """Clean samples calibrated on."""
    ensemble: dict[str, Any]
    """The [ensemble] keys that name ensemble.npz and its thresholds; empty for a union."""
    monitors: list[str]

    def calibration_table(self, mode: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
        """config.toml's [calibration] table."""
        return {
            "mode": mode,
            "references": REFERENCES,
            "fingerprint": fingerprint_id(fingerprint),
            "folds": self.settings.folds,
            "seed": self.settings.seed,
            "confidence": self.settings.confidence,
        }


def derive_and_save(
    directory: Path,
    detectors: list[Detector],
    pipeline_for: PipelineFor,
    samples: References,
    settings: DecisionSettings,
    fit_samples: References | None = None,
) -> Calibrated:
    """Fit the learning detectors (on `fit_samples`, else on `samples`), derive the thresholds and
    the ensemble from `samples`, and write each detector's threshold and artifacts, the references
    and ensemble.npz into `directory`."""
    if any(d.learns for d in detectors):
        fit_learners(detectors, fit_data(pipeline_for([d for d in detectors if d.learns]), fit_samples or samples))
        if fit_samples is not None:
            settings = replace(settings, folds=0)  # they never saw the references: their scores there are honest
    decision = derive(pipeline_for, detectors, samples, settings)
    for detector in detectors:
        detector.threshold = decision.thresholds[detector.name]
        detector.save(directory)
    samples.save(directory / REFERENCES)
    ensemble: dict[str, Any] = {}
    if decision.combiner is not None:
        decision.combiner.save(directory / ENSEMBLE)
        ensemble.update(references=ENSEMBLE, threshold=decision.combiner.threshold)
        if decision.combiner.min_p_threshold is not None:
            ensemble["min_p_threshold"] = decision.combiner.min_p_threshold
    return Calibrated(decision, settings, samples.rows, ensemble, sorted(d.name for d in detectors if d.monitor))


def check_and_report(
    directory: Path,
    name: str,
    calibrated: Calibrated,
    fingerprint: dict[str, Any],
    held_out: np.ndarray | None,
    **extra: Any,
) -> dict[str, Any]:
    """Check that the config.toml the caller wrote loads as the server will load it, then write
    calibration.json: the thresholds, the calibration flag rate and, with `held_out` (whether the
    decision flags each held-out clean sample), the held-out rate with its 95% upper bound."""
    check_loadable(load_model_config(directory))
    decision, settings = calibrated.decision, calibrated.settings
    report: dict[str, Any] = {
        "model": name,
        "target_fpr": settings.target_fpr,
        "confidence": settings.confidence,
        "n_calibration": calibrated.rows,
        "cross_fit_folds": settings.folds,
        "ensemble": {"method": settings.method, **calibrated.ensemble},
        "thresholds": decision.thresholds,
        "calibration_fpr": decision.calibration_fpr,
        "calibration_fpr_per_detector": per_detector_rates(decision.scores, decision.thresholds),
        "monitors": calibrated.monitors,
        "fingerprint": fingerprint_id(fingerprint),
        "runtime": fingerprint,
    }
    if held_out is not None and len(held_out):
        flagged, n = int(held_out.sum()), len(held_out)
        report.update(n_holdout=n, holdout_fpr=flagged / n, holdout_fpr_upper_95=upper_bound(flagged, n, 0.95))
    report.update(extra)
    (directory / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    if "holdout_fpr" in report:
        log.info(
            "calibrated %s from %d clean samples: held-out clean flag rate %.3f (95%% upper bound %.3f, target %.3f)",
            name,
            calibrated.rows,
            report["holdout_fpr"],
            report["holdout_fpr_upper_95"],
            settings.target_fpr,
        )
    else:
        log.info("calibrated %s from %d clean samples: no held-out samples", name, calibrated.rows)
    return report
