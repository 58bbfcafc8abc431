"""Thresholds from clean scores, with the ensemble's false-positive rate held at a target.

Each detector flags when its score reaches its own threshold. Calibrating every detector at the
target rate separately would let their false positives add up (two detectors at 5% can flag ~10%
of clean inputs); a raw max over detectors would let the noisiest one set the scale. Instead
every detector gets the same budget of k clean exceedances, and k is the largest number for which
the union of flags (a request is flagged if ANY detector fires) stays within the target.
Overlapping detectors then share the budget automatically. What equal budgets leave unused is
then handed out one exceedance at a time to the detector whose extra flag adds the fewest
union flags, until the next one would break the target.

"Within the target" is guard.detection.bounds.within_target: the number of calibration samples
the union flags must be small enough that the rate on new clean inputs stays under the target
with the configured confidence, not merely on average.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guard.detection.bounds import DEFAULT_CONFIDENCE, within_target

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


def fit_thresholds(
    scores: dict[str, np.ndarray], target_fpr: float, confidence: float = DEFAULT_CONFIDENCE
) -> Calibration:
    """Thresholds whose union keeps the flag rate on new clean inputs at most target_fpr (with
    `confidence`, guard.detection.bounds)."""
    if not scores:
        raise ValueError("no detector scores to calibrate")
    counts = {len(s) for s in scores.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every detector needs the same, non-zero number of clean scores, got {counts}")
    n = counts.pop()

    def union_ok(budget: dict[str, int]) -> tuple[bool, dict[str, float]]:
        thresholds = {name: threshold_for(s, budget[name]) for name, s in scores.items()}
        flagged = round(flag_rates(scores, thresholds)[1] * n)
        return within_target(flagged, n, target_fpr, confidence), thresholds

    allowed = int(np.floor(target_fpr * n))
    while allowed > 0 and not union_ok(dict.fromkeys(scores, allowed))[0]:
        allowed -= 1
    budget = dict.fromkeys(scores, allowed)
    # Equal budgets move the union in steps of up to one flag per detector; hand what is left
    # of the target to detectors one exceedance at a time, where it adds the fewest flags.
    while True:
        options = []
        for name in scores:
            if budget[name] >= n:  # already allowed to flag every sample (scores under MIN_THRESHOLD flag none)
                continue
            trial = {**budget, name: budget[name] + 1}
            ok, thresholds = union_ok(trial)
            if ok:
                options.append((flag_rates(scores, thresholds)[1], name))
        if not options:
            break
        budget[min(options)[1]] += 1
    _, thresholds = union_ok(budget)
    per_detector, union = flag_rates(scores, thresholds)
    return Calibration(thresholds, min(budget.values()), union, per_detector)
