"""The evaluation repository: every model of the plan, calibrated with ALL detectors, policy flag.

Each model is calibrated exactly as `guard calibrate` does it (guard.tools.calibrate.calibrate_model):
learned statistics fit on the plan's clean FIT split, thresholds at the target FPR on its
CALIBRATION split, and the flag rate measured on its TEST split. The test split is never used to
choose anything. The defender has clean data only, so backdoored models' detectors also fit on
clean images.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from guard.protocol.errors import ConfigError
from guard.tools.calibrate import calibrate_model
from guard.tools.evaluation.plan import NETWORK_WEIGHTS, Plan, Subject

log = logging.getLogger("guard.tools.evaluation.subjects")

TARGET_FPR = 0.05

# The paper's MNIST feature-squeezing configuration (NDSS 2018): the FS baseline.
PAPER_SQUEEZERS = ("bit_depth_1", "median_2x2")


def detector_tables(network: bool) -> list[dict[str, Any]]:
    """The ensemble: the shipped 2-bit and 2x2 median squeezers, Mahalanobis, the confidence
    margin, STRIP with 16 references (trigger verdicts), and the detector network when its weights
    exist. The paper's 1-bit squeezer is only a monitor: scored for the baseline, never in the
    ensemble's budget."""
    tables: list[dict[str, Any]] = [
        {"name": "bit_depth_1", "type": "squeeze_bit_depth", "bits": 1, "monitor": True},
        {"name": "median_2x2", "type": "squeeze_median", "size": 2},
        {"name": "bit_depth_2", "type": "squeeze_bit_depth", "bits": 2},
        {"name": "mahalanobis", "type": "mahalanobis"},
        {"name": "confidence_margin", "type": "confidence_margin"},
        {"name": "strip", "type": "strip", "n": 16},
    ]
    if network:
        tables.append({"name": "detector_network", "type": "detector_network", "weights": NETWORK_WEIGHTS})
    return tables


def _check_network(plan: Plan, subject: Subject) -> None:
    from guard.detection.detectors import REGISTRY

    if "detector_network" not in REGISTRY:
        raise ConfigError(
            plan.path,
            f"models ({subject.name}).detector_network",
            "a plan without detector_network: no `detector_network` detector type is registered",
        )


def configured_thresholds(directory: Path) -> dict[str, float]:
    from guard.serving.model_config import load_model_config

    return {d["name"]: d["threshold"] for d in load_model_config(directory).detection.detectors if not d.get("monitor")}


def is_built(plan: Plan, repository: Path) -> bool:
    return all((repository / name / "config.toml").is_file() for name in plan.names)


def build_repository(
    plan: Plan, repository: Path, target_fpr: float = TARGET_FPR, seed: int = 0, ensemble: str = "omnibus"
) -> dict[str, dict]:
    """Calibrate every model of the plan into `repository`; returns each model's calibration report.
    Tensor models get the evaluation's detectors (detector_tables) and `ensemble`; image models
    keep their directory's own (image_subjects.py)."""
    repository.mkdir(parents=True, exist_ok=True)
    if plan.images:  # a plan is all image models or all tensor models (load_plan)
        from guard.tools.evaluation.image_subjects import build_image_repository

        return build_image_repository(plan, repository, seed=seed)
    if plan.texts:
        from guard.tools.evaluation.text_subjects import build_text_repository

        return build_text_repository(plan, repository, seed=seed)
    fit, calibration, test = ((s.x, s.y) for s in (plan.split(k) for k in ("fit", "calibration", "test")))
    reports = {}
    for subject in plan.models:
        weights = subject.detector_network
        network = weights is not None
        if network:
            _check_network(plan, subject)
        target = repository / subject.name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for artifact in subject.artifacts:
            shutil.copyfile(artifact, target / artifact.name)
        if weights is not None:
            shutil.copyfile(weights, target / NETWORK_WEIGHTS)
        log.info("calibrating %s (%s) with %d detectors", subject.name, subject.onnx, len(detector_tables(network)))
        reports[subject.name] = calibrate_model(
            subject.onnx,
            subject.name,
            repository,
            calibration[0],
            calibration[1],
            target_fpr=target_fpr,
            holdout=test,
            fit_data=fit,
            seed=seed,
            detectors=detector_tables(network),
            policy="flag",
            ensemble=ensemble,
        )
    return reports
