"""How the detectors of a model combine into one decision, calibrated on clean scores.

`union`: each detector has its own threshold and a row is flagged when ANY reaches it; the
thresholds share the target false-positive budget (guard.detection.thresholds.fit_thresholds).
Simple and explainable, but every detector added divides the budget, so a strong detector runs at a much
stricter threshold inside the ensemble than alone.

`fisher`: each detector's score becomes a p-value against its clean calibration scores,
p = (1 + #{clean >= s}) / (n + 1), and the row's statistic is Fisher's T = -2 * sum(log p). One
threshold on T holds the false-positive rate. Above the top decile of the clean scores the p-value
follows an exponential tail fitted to that decile (peaks over threshold): an empirical p-value
cannot go below 1 / (n + 1), which would cap what a detector that plainly sees an attack can
contribute, while the detectors that see nothing keep adding their clean-looking share. Evidence
adds up: a row that is unusual to two detectors outranks one that is a little more unusual to only
one, and a detector that sees nothing costs the others little. The threshold comes from the
calibration rows' own T, each computed leave-one-out (its p-values against the other n - 1 rows),
with as many exceedances as guard.detection.bounds allows: the same exchangeability argument as
conformal calibration.

`omnibus`: Fisher's statistic OR the smallest p-value (Tippett's), each with its own threshold,
the two thresholds sharing the budget exactly as the union's detectors do (on the calibration
rows' leave-one-out values). Fisher alone dilutes a single plainly-firing detector among the
others' noise (one detector seeing a trigger, or the detector network seeing PGD); the smallest
p-value alone misses evidence spread over several detectors (CW, DeepFool at the decision
boundary). Together they cover both at the price of splitting the budget two ways, not K ways.

All give a per-row ratio, statistic / threshold (the larger of the two for omnibus), that is >= 1
exactly when the row is flagged: that ratio is the gateway's `guard_score`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from guard.detection.bounds import DEFAULT_CONFIDENCE, allowed_exceedances
from guard.detection.thresholds import fit_thresholds, threshold_for


@dataclass
class Union:
    thresholds: dict[str, float]

    @classmethod
    def fit(cls, scores: dict[str, np.ndarray], target_fpr: float, confidence: float = DEFAULT_CONFIDENCE) -> Union:
        return cls(fit_thresholds(scores, target_fpr, confidence).thresholds)

    def ratios(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """[detectors, rows]: each detector's score over its own threshold (>= 1 fires)."""
        return np.stack([np.asarray(scores[n], np.float64) / t for n, t in self.thresholds.items()])

    def ratio(self, scores: dict[str, np.ndarray], ratios: np.ndarray | None = None) -> np.ndarray:
        """Per row: the largest ratio, >= 1 exactly when some detector fires."""
        largest: np.ndarray = (self.ratios(scores) if ratios is None else ratios).max(axis=0)
        return largest


@dataclass
class Fisher:
    references: dict[str, np.ndarray]
    """Each detector's clean calibration scores, sorted ascending."""
    threshold: float
    """On T = -2 * sum(log p)."""
    min_p_threshold: float | None = None
    """omnibus: the threshold on -log(min p); None for Fisher alone."""

    TAIL_FRACTION = 0.1
    """Share of the clean scores the exponential tail is fitted to."""

    @staticmethod
    def _count_at_least(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
        return len(reference) - np.searchsorted(reference, values, side="left")

    @classmethod
    def tail(cls, reference: np.ndarray) -> tuple[float, float, int]:
        """(u, scale, m): an exponential tail over the m clean scores above u, the (m+1)-th largest."""
        n = len(reference)
        m = min(max(int(cls.TAIL_FRACTION * n), 1), n - 1)
        u = float(reference[n - m - 1])
        return u, max(float(np.mean(reference[n - m :] - u)), 1e-12), m

    @classmethod
    def empirical_p(
        cls, reference: np.ndarray, values: np.ndarray, loo: bool = False, tail: tuple[float, float, int] | None = None
    ) -> np.ndarray:
        """p-values of `values` against `reference`; loo: the values are the reference's own rows,
        each then judged against the other n - 1."""
        n = len(reference)
        others = n - 1 if loo else n
        at_least = cls._count_at_least(reference, values) - (1 if loo else 0)
        p = (1.0 + at_least) / (others + 1.0)
        u, scale, m = tail or cls.tail(reference)
        above = values > u
        if above.any():
            tail_p = (m + 1.0) / (others + 1.0) * np.exp(-(values[above] - u) / scale)
            p[above] = np.minimum(p[above], tail_p)
        return p

    def __post_init__(self) -> None:
        # Per-batch cost matters on the hot path: the tails depend on the references alone.
        self._tails = {name: self.tail(ref) for name, ref in self.references.items()}

    def p_values(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: self.empirical_p(ref, np.asarray(scores[name], np.float64), tail=self._tails[name])
            for name, ref in self.references.items()
        }

    @staticmethod
    def fisher_statistic(p_values: dict[str, np.ndarray]) -> np.ndarray:
        statistic: np.ndarray = -2.0 * np.sum([np.log(p) for p in p_values.values()], axis=0)
        return statistic

    @staticmethod
    def min_p_statistic(p_values: dict[str, np.ndarray]) -> np.ndarray:
        statistic: np.ndarray = -np.log(np.min(list(p_values.values()), axis=0))
        return statistic

    def statistic(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        return self.fisher_statistic(self.p_values(scores))

    def ratio(self, scores: dict[str, np.ndarray], p_values: dict[str, np.ndarray] | None = None) -> np.ndarray:
        p = p_values if p_values is not None else self.p_values(scores)
        ratio = self.fisher_statistic(p) / self.threshold
        if self.min_p_threshold is not None:
            ratio = np.maximum(ratio, self.min_p_statistic(p) / self.min_p_threshold)
        return ratio

    @classmethod
    def fit(
        cls,
        scores: dict[str, np.ndarray],
        target_fpr: float,
        omnibus: bool = False,
        confidence: float = DEFAULT_CONFIDENCE,
    ) -> Fisher:
        references = {name: np.sort(np.asarray(s, np.float64)) for name, s in scores.items()}
        n = len(next(iter(references.values())))
        if n < 2:
            raise ValueError("Fisher combination needs at least 2 calibration scores per detector")
        loo = {
            name: cls.empirical_p(ref, np.asarray(scores[name], np.float64), loo=True)
            for name, ref in references.items()
        }
        if omnibus:  # two statistics sharing the budget like two detectors of a union
            fit = fit_thresholds(
                {"fisher": cls.fisher_statistic(loo), "min_p": cls.min_p_statistic(loo)}, target_fpr, confidence
            )
            return cls(references, fit.thresholds["fisher"], fit.thresholds["min_p"])
        # threshold_for never returns 0, so a row typical to every detector (T = 0) never flags.
        return cls(references, threshold_for(cls.fisher_statistic(loo), allowed_exceedances(n, target_fpr, confidence)))

    def neg_log_p(self, name: str, score: torch.Tensor) -> torch.Tensor:
        """-log p of `name`'s scores, differentiable in the score (for attacks on the ensemble):
        linear between the sorted clean scores, where p_values is a step function, and the same
        exponential tail above them."""
        reference = torch.as_tensor(self.references[name], dtype=score.dtype, device=score.device)
        n = reference.shape[0]
        survival = (1.0 + n - torch.arange(n, dtype=score.dtype, device=score.device)) / (n + 1.0)
        s = score.clamp(float(reference[0]), float(reference[-1]))
        upper = torch.searchsorted(reference, s.detach()).clamp(1, n - 1)
        lo, hi = reference[upper - 1], reference[upper]
        weight = (s - lo) / (hi - lo).clamp_min(1e-12)
        body = survival[upper - 1] + weight * (survival[upper] - survival[upper - 1])
        u, scale, m = self._tails[name]
        tail = (m + 1.0) / (n + 1.0) * torch.exp(-(score - u) / scale)
        p = torch.where(score > u, torch.minimum(body, tail), body)
        return -torch.log(p.clamp_min(1e-300))

    def save(self, path: Path) -> None:
        np.savez(path, allow_pickle=False, **self.references)  # plain arrays, as load() reads them

    @classmethod
    def load(cls, path: Path, threshold: float, min_p_threshold: float | None = None) -> Fisher:
        with np.load(path) as data:
            return cls(
                {name: np.sort(np.asarray(data[name], np.float64)) for name in data.files}, threshold, min_p_threshold
            )
