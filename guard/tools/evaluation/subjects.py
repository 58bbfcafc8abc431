"""The evaluation repository: every model under test, calibrated with ALL detectors, policy flag.

`digits` is the shipped INT8 model; `backdoor_*` are the zoo's poisoned models (models/zoo). Each
is calibrated exactly as `guard calibrate` does it (guard.tools.calibrate.calibrate_model): learned
statistics fit on the clean TRAIN split, thresholds at the target FPR on the CALIBRATION split,
and the flag rate measured on the TEST split. The test split is never used to choose anything.
The defender has clean data only, so the backdoored models' detectors also fit on clean images.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.tools.calibrate import calibrate_model

log = logging.getLogger("guard.tools.evaluation.subjects")

ROOT = Path(__file__).resolve().parents[3]
DIGITS_DIR = ROOT / "models" / "repository" / "digits"
ZOO = ROOT / "models" / "zoo"
NETWORK_WEIGHTS = "detector_net.npz"
TARGET_FPR = 0.05

# The paper's MNIST feature-squeezing configuration (Xu et al. 2018): the FS baseline.
PAPER_SQUEEZERS = ("bit_depth_1", "median_2x2")


@dataclass(frozen=True)
class Backdoor:
    name: str
    """Model name in the evaluation repository (its zoo directory's name)."""
    onnx: Path
    trigger: Path
    target: int


def backdoors(zoo: Path = ZOO) -> list[Backdoor]:
    """The zoo's backdoored models: model.onnx, trigger.npz and the poison target of each."""
    found = []
    for directory in sorted(zoo.glob("backdoor_*")):
        if (directory / "model.onnx").is_file() and (directory / "trigger.npz").is_file():
            poison = json.loads((directory / "poison.json").read_text())
            found.append(Backdoor(directory.name, directory / "model.onnx", directory / "trigger.npz",
                                  int(poison["target"])))
    return found


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


def _network_available() -> bool:
    if not (DIGITS_DIR / NETWORK_WEIGHTS).is_file():
        return False
    from guard.detection.detectors import REGISTRY

    if "detector_network" not in REGISTRY:
        log.warning("%s exists but no `detector_network` detector type is registered; evaluating without it",
                    DIGITS_DIR / NETWORK_WEIGHTS)
        return False
    return True


def configured_thresholds(directory: Path) -> dict[str, float]:
    from guard.serving.model_config import load_model_config

    return {d["name"]: d["threshold"] for d in load_model_config(directory).detection.detectors if not d.get("monitor")}


def is_built(repository: Path) -> bool:
    names = ["digits", *(b.name for b in backdoors())]
    return all((repository / n / "config.toml").is_file() for n in names)


def build_repository(repository: Path, target_fpr: float = TARGET_FPR, seed: int = 0,
                     ensemble: str = "omnibus") -> dict[str, dict]:
    """Calibrate every model under test into `repository`; returns each model's calibration report."""
    from models.digits_data import load_split

    train, calibration, test = (load_split(s) for s in ("train", "calibration", "test"))
    repository.mkdir(parents=True, exist_ok=True)
    network = _network_available()
    jobs = [("digits", DIGITS_DIR / "model.onnx", network)] + [(b.name, b.onnx, False) for b in backdoors()]
    reports = {}
    for name, onnx, with_network in jobs:
        target = repository / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        if with_network:
            shutil.copyfile(DIGITS_DIR / NETWORK_WEIGHTS, target / NETWORK_WEIGHTS)
        log.info("calibrating %s (%s) with %d detectors", name, onnx, len(detector_tables(with_network)))
        reports[name] = calibrate_model(
            onnx, name, repository, calibration[0], calibration[1], target_fpr=target_fpr,
            holdout=test, fit_data=train, seed=seed, detectors=detector_tables(with_network), policy="flag",
            ensemble=ensemble)
    return reports
