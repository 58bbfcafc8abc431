"""The [calibration] table of a model config: where its clean references are, the runtime it was
calibrated under, how its thresholds were derived, and what to do on a host that differs."""

from __future__ import annotations

from dataclasses import dataclass

from guard.detection.bounds import DEFAULT_CONFIDENCE
from guard.protocol.settings import TableReader

MODES = ("recalibrate", "strict", "trust")
"""recalibrate: derive thresholds again from the references where the fingerprint differs;
strict: refuse to load there; trust: serve the stored thresholds anyway (logged)."""


@dataclass(frozen=True)
class CalibrationSettings:
    mode: str = "recalibrate"
    references: str | None = None
    """The clean references (.npz in the model directory); None: this model cannot be recalibrated."""
    fingerprint: str = ""
    """fingerprint_id of the runtime the stored thresholds were derived under ("" = unknown)."""
    folds: int = 0
    """Cross-fitting folds used for detectors that learned from the references (0: none did)."""
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE


def read_calibration_settings(r: TableReader) -> CalibrationSettings:
    r.unknown({"mode", "references", "fingerprint", "folds", "seed", "confidence"})
    references = (
        str(r.file("references", what="the clean references `guard calibrate` wrote").relative_to(r.directory))
        if "references" in r.table
        else None
    )
    confidence = r.get("confidence", float, DEFAULT_CONFIDENCE)
    if not 0.0 < confidence < 1.0:
        raise r.fail("confidence", "a probability strictly between 0 and 1", confidence)
    folds = r.positive("folds", 0, allow_zero=True)
    if folds == 1:
        raise r.fail("folds", "0 (no cross-fitting) or at least 2", folds)
    return CalibrationSettings(
        mode=r.choice("mode", MODES, "recalibrate"),
        references=references,
        fingerprint=r.get("fingerprint", str, ""),
        folds=folds,
        seed=r.positive("seed", 0, allow_zero=True),
        confidence=confidence,
    )
