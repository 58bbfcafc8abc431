"""The evaluation repository's image models: each plan model directory copied in, served under
policy flag, and calibrated as `guard calibrate --model DIR` calibrates it
(guard.tools.calibrate_dir.calibrate_directory): its own detectors and [ensemble], learned
statistics fitted on the plan's FIT frames, thresholds derived on its CALIBRATION frames, the
clean flag rate measured on its TEST frames. Every frame goes as the evaluation sends it: at the
model's input size, as PNG (image_models.py), so calibration and measurement see the same encoding.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import tomlkit

from guard.detection.calibration.references import References
from guard.tools.calibrate_dir import calibrate_directory
from guard.tools.evaluation.frame_data import FrameSplit
from guard.tools.evaluation.image_models import ImageModel
from guard.tools.evaluation.plan import Plan

log = logging.getLogger("guard.tools.evaluation.image_subjects")

GENERATED = ("references.npz", "ensemble.npz", "calibration.json")
"""What calibration writes into a model directory: not copied from the plan's, it is derived again."""


def client_rows(image: ImageModel, encoded: list[bytes]) -> np.ndarray:
    """Encoded frames as the model's BYTES input takes them: one per row ([N] or [N, 1])."""
    rows = np.empty(len(encoded), dtype=object)
    rows[:] = encoded
    return rows.reshape(len(encoded), *image.config.inputs[0].shape)


def references(image: ImageModel, split: FrameSplit) -> References:
    """Clean frames as calibration takes them: PNG at the model's input size, as the evaluation sends
    them, each with its camera where the model keeps per-camera baselines (calibration then fits
    its factory floor on every camera's warm-up, as `guard calibrate --data CAM1 CAM2 ...` does)."""
    rows = client_rows(image, image.encode(image.views(split.frames)))
    cameras = np.array(split.cameras, dtype=str) if image.warmup else None
    return References({image.config.inputs[0].name: rows}, cameras=cameras)


def copy_model(directory: Path, target: Path, name: str) -> None:
    """A plan's model directory under the evaluation's name, served under policy flag (every answer
    carries logits and scores), with its thresholds still to be derived."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(directory, target, ignore=shutil.ignore_patterns(*GENERATED))
    document = tomlkit.parse((target / "config.toml").read_text())
    document["name"] = name
    document["policy"] = "flag"
    document.pop("calibration", None)  # derived again below, for this host
    (target / "config.toml").write_text(tomlkit.dumps(document))


def calibrate_copy(
    directory: Path, target: Path, name: str, splits: tuple[References, References, References], seed: int = 0
) -> dict:
    """The plan's model directory copied to `target` under `name` and calibrated as `guard calibrate
    --model` calibrates it: fitted on the first of `splits` (fit, calibration, test), thresholds on
    the second, the clean flag rate measured on the third; returns the report."""
    fit, calibration, test = splits
    copy_model(directory, target, name)
    log.info("calibrating %s (%s) on %d samples", name, directory, calibration.rows)
    return calibrate_directory(target, calibration, holdout=test, fit_samples=fit, seed=seed)


def build_image_repository(plan: Plan, repository: Path, seed: int = 0) -> dict[str, dict]:
    """Copy and calibrate every image model of the plan into `repository`; returns the reports."""
    splits = [plan.frames(key) for key in ("fit", "calibration", "test")]
    reports = {}
    for subject in plan.images:
        image = subject.image
        assert image is not None  # plan.images holds the model directories
        fit, calibration, test = (references(image, split) for split in splits)
        target = repository / subject.name
        reports[subject.name] = calibrate_copy(image.directory, target, subject.name, (fit, calibration, test), seed)
    return reports
