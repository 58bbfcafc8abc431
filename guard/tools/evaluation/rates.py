"""Evaluation metrics: attack success, detection at a clean false-positive rate, AUROC, ensembles.

A "scorer" is a set of detectors combined as the gateway combines them (guard.detection.ensemble: a union,
or Fisher / omnibus over p-values); a single detector is a scorer of one. Thresholds are fitted
with the gateway's own code on the CALIBRATION split's scores; the test split only measures. For
AUROC a scorer's continuous score is its ratio to the 5% thresholds, which is the gateway's own
`guard_score` for the ensemble.
"""

from __future__ import annotations

import numpy as np

from guard.detection.ensemble import Fisher, Union
from guard.detection.thresholds import threshold_for

FPRS = (0.01, 0.05)
AUROC_FPR = 0.05

Scores = dict[str, np.ndarray]


def flagged(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The guard's operating-point rule, for every rate measured here: a score flags when it
    reaches its threshold (score >= threshold, as each detector and the ensemble's ratio >= 1 do)."""
    return np.asarray(scores) >= threshold


def operating_threshold(clean: np.ndarray, fpr: float) -> float:
    """The evaluation operating point on clean scores: the smallest threshold at which `flagged`
    flags at most floor(fpr * n) of them (guard.detection.thresholds.threshold_for, so ties never
    over-flag). Unlike the served thresholds it holds the rate on these scores, not on new ones."""
    clean = np.asarray(clean, np.float64)
    return threshold_for(clean, int(np.floor(fpr * len(clean) + 1e-9)))


def success(
    clean_pred: np.ndarray | None, adv_pred: np.ndarray, y: np.ndarray, target: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(eligible, successful) masks. Untargeted: eligible rows are those the served model gets right
    on the clean image, successful ones are misclassified after the attack. Targeted (a backdoor
    trigger): eligible rows have label != target, successful ones are classified as target; the
    clean predictions are not needed (None)."""
    adv_pred, y = np.asarray(adv_pred), np.asarray(y)
    if target is None:
        eligible = np.asarray(clean_pred) == y
        return eligible, eligible & (adv_pred != y)
    eligible = y != target
    return eligible, eligible & (adv_pred == target)


def attack_success_rate(eligible: np.ndarray, successful: np.ndarray) -> float | None:
    n = int(np.sum(eligible))
    return None if n == 0 else float(np.sum(successful & eligible) / n)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float | None:
    """P(positive scores above negative) + half the ties (Mann-Whitney U); None if a side is empty."""
    neg, pos = np.asarray(negatives, np.float64).ravel(), np.asarray(positives, np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        return None
    ranks = _average_ranks(np.concatenate([neg, pos]))
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def roc_curve(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) for every threshold t (`flagged`: score >= t), from (0, 0) to (1, 1)."""
    neg, pos = np.asarray(negatives, np.float64), np.asarray(positives, np.float64)
    cuts = np.unique(np.concatenate([neg, pos]))[::-1]
    fpr = np.array([0.0] + [float(flagged(neg, c).mean()) if neg.size else 0.0 for c in cuts])
    tpr = np.array([0.0] + [float(flagged(pos, c).mean()) if pos.size else 0.0 for c in cuts])
    return fpr, tpr


class Scorer:
    """Detectors combined as the gateway would ("union", "fisher", "omnibus": guard.detection.ensemble), refitted on
    calibration scores at each FPR in `fprs`."""

    def __init__(
        self,
        name: str,
        detectors: list[str],
        calibration: Scores,
        fprs=FPRS,
        auroc_fpr=AUROC_FPR,
        method: str = "union",
    ):
        self.name, self.detectors, self.method = name, list(detectors), method

        def fit(target: float) -> Union | Fisher:
            scores = {d: calibration[d] for d in detectors}
            return Union.fit(scores, target) if method == "union" else Fisher.fit(scores, target, method == "omnibus")

        self.combiners = {f: fit(f) for f in sorted({*fprs, auroc_fpr})}
        self.fprs, self.auroc_fpr = tuple(fprs), auroc_fpr

    @property
    def thresholds(self) -> dict[float, dict[str, float] | tuple[float, float | None]]:
        """Per FPR: the union's per-detector thresholds, or Fisher's (and omnibus' min-p) threshold."""
        return {
            f: c.thresholds if isinstance(c, Union) else (c.threshold, c.min_p_threshold)
            for f, c in self.combiners.items()
        }

    def flags(self, scores: Scores, fpr: float) -> np.ndarray:
        return flagged(self.combiners[fpr].ratio(scores), 1.0)

    def _rate(self, scores: Scores, fpr: float) -> float | None:
        flags = self.flags(scores, fpr)
        return None if flags.size == 0 else float(flags.mean())

    def continuous(self, scores: Scores) -> np.ndarray:
        return self.combiners[self.auroc_fpr].ratio(scores)

    def clean_fpr(self, clean: Scores) -> dict[str, float | None]:
        """The realised flag rate on clean samples (the test split) at each target FPR."""
        return {f"{f:g}": self._rate(clean, f) for f in self.fprs}

    def evaluate(self, clean: Scores, positives: Scores) -> dict[str, float | None]:
        """Detection of the positives at each FPR and AUROC against the clean scores."""
        result: dict[str, float | None] = {f"det@{f:g}": self._rate(positives, f) for f in self.fprs}
        result["auroc"] = auroc(self.continuous(clean), self.continuous(positives))
        return result

    def describe(self) -> dict:
        return {
            "detectors": self.detectors,
            "method": self.method,
            "thresholds": {f"{f:g}": t for f, t in self.thresholds.items()},
        }


def subset(scores: Scores, mask: np.ndarray) -> Scores:
    return {name: np.asarray(s)[mask] for name, s in scores.items()}


def build_scorers(
    detectors: list[str],
    calibration: Scores,
    baselines: dict[str, list[str]],
    ensemble: list[str] | None = None,
    method: str = "union",
) -> dict[str, Scorer]:
    """The gateway's ensemble (its non-monitor detectors, default all, combined by `method`), the
    named baselines as unions (when all their detectors exist), each detector."""
    scorers = {"ensemble": Scorer("ensemble", ensemble or detectors, calibration, method=method)}
    for name, members in baselines.items():
        if all(m in detectors for m in members):
            scorers[name] = Scorer(name, members, calibration)
    for d in detectors:
        scorers.setdefault(d, Scorer(d, [d], calibration))
    return scorers
