"""The evaluation repository's text models: each plan model directory copied in, served under
policy flag, and calibrated as `guard calibrate --model DIR` calibrates it (its own detectors and
[ensemble]): learned statistics fitted on the plan's FIT texts, thresholds derived on its
CALIBRATION texts, the clean flag rate measured on its TEST texts. Out-of-domain sets are never
used here: they are only measured."""

from __future__ import annotations

from pathlib import Path

from guard.detection.calibration.references import References
from guard.tools.clean_data import utf8_rows
from guard.tools.evaluation.image_subjects import calibrate_copy
from guard.tools.evaluation.plan import Plan
from guard.tools.evaluation.text_data import TextSplit
from guard.tools.evaluation.text_models import TextModel


def references(model: TextModel, split: TextSplit) -> References:
    """A split's texts as the model's clients send them, with their labels."""
    spec = model.config.inputs[0]
    return References({spec.name: utf8_rows(list(split.texts), spec)}, split.y)


def build_text_repository(plan: Plan, repository: Path, seed: int = 0) -> dict[str, dict]:
    """Copy and calibrate every text model of the plan into `repository`; returns the reports."""
    splits = [plan.text_split(key) for key in ("fit", "calibration", "test")]
    reports = {}
    for subject in plan.texts:
        model = subject.text
        assert model is not None  # plan.texts holds the text model directories
        fit, calibration, test = (references(model, split) for split in splits)
        target = repository / subject.name
        reports[subject.name] = calibrate_copy(model.directory, target, subject.name, (fit, calibration, test), seed)
    return reports
