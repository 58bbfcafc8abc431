"""Thresholds from clean scores, with the ensemble's false-positive rate held at a target.

Each detector flags when its score reaches its own threshold. Calibrating every detector at the
target rate separately would let their false positives add up (two detectors at 5% can flag ~10%
of clean inputs); a raw max over detectors would let the noisiest one set the scale. Instead
every detector gets the same budget of k clean exceedances, and k is the largest number for which
the union of flags (a request is flagged if ANY detector fires) stays within the target.
Overlapping detectors then share the budget automatically.

"Within the target" uses the split-conformal bound: if c of n exchangeable calibration samples
are flagged, a new clean sample is flagged with probability at most (c + 1) / (n + 1), so k is
chosen such that (c + 1) / (n + 1) <= target. On small calibration sets this is slightly
stricter than c / n <= target, which would let the rate on unseen data drift above the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Scores below this are numerical noise; a floor keeps score/threshold ratios meaningful.
MIN_THRESHOLD = 1e-9


@dataclass(frozen=True)
class Calibration:
    thresholds: dict[str, float]
    exceedances_per_detector: int
    calibration_fpr: float
    """Fraction of calibration samples that any detector flags (at most the target)."""
    detector_fpr: dict[str, float]


def threshold_for(scores: np.ndarray, allowed: int) -> float:
    """Smallest threshold such that at most `allowed` of the scores reach it (score >= t flags)."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if allowed >= len(ordered):
        return MIN_THRESHOLD
    kept = ordered[len(ordered) - allowed - 1]  # the largest score that must stay unflagged
    return max(float(np.nextafter(kept, np.inf)), MIN_THRESHOLD)


def flags(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> dict[str, np.ndarray]:
    return {name: np.asarray(s) >= thresholds[name] for name, s in scores.items()}


def flag_rates(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> tuple[dict[str, float], float]:
    """Per-detector flag rates and the union's (any detector fires)."""
    fired = flags(scores, thresholds)
    union = np.logical_or.reduce(list(fired.values()))
    return {name: float(f.mean()) for name, f in fired.items()}, float(union.mean())


def fit_thresholds(scores: dict[str, np.ndarray], target_fpr: float) -> Calibration:
    """Thresholds whose union flag rate on these clean scores is at most target_fpr."""
    if not scores:
        raise ValueError("no detector scores to calibrate")
    counts = {len(s) for s in scores.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every detector needs the same, non-zero number of clean scores, got {counts}")
    n = counts.pop()
    for allowed in range(int(np.floor(target_fpr * n)), -1, -1):
        thresholds = {name: threshold_for(s, allowed) for name, s in scores.items()}
        per_detector, union = flag_rates(scores, thresholds)
        flagged = round(union * n)
        if (flagged + 1) / (n + 1) <= target_fpr or allowed == 0:  # zero flags: the strictest there is
            return Calibration(thresholds, allowed, union, per_detector)
    raise AssertionError("unreachable: the loop returns at allowed == 0")
