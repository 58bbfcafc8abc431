"""One served model's clean reference, and the report row of an attack on it.

The gateway's answers for the clean CALIBRATION split give the scorers (rates.py: thresholds refitted
with the gateway's own code at 1% and 5%); its answers for the clean TEST split give each scorer's
realised false-positive rate, the AUROC negatives, and the clean flag rate at the served thresholds
(the gateway's own verdicts) with its one-sided 95% upper bound. A row measures the successful
examples of one attack against both: tensor and image models share it, so the report code is one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from guard.detection.bounds import upper_bound
from guard.detection.ensemble import Fisher
from guard.serving.model_config import load_model_config
from guard.tools.evaluation import rates as m
from guard.tools.evaluation.client import Served
from guard.tools.evaluation.subjects import PAPER_SQUEEZERS, configured_thresholds

log = logging.getLogger("guard.tools.evaluation")

BASELINES = {"fs_paper": list(PAPER_SQUEEZERS)}
"""Scored as unions where a model has all their detectors."""
CLEAN = "clean"


def served_flags(served: Served) -> np.ndarray:
    """[N] whether the gateway flagged each request at its served thresholds (verdict not clean)."""
    return np.asarray(served.verdicts) != CLEAN


def flag_rate(flags: np.ndarray) -> dict:
    """flagged / n with the one-sided 95% Clopper-Pearson upper bound (None rate when n is 0)."""
    n, k = len(flags), int(np.sum(flags))
    return {"flagged": k, "n": n, "rate": k / n if n else None, "upper_95": upper_bound(k, n)}


class ModelReference:
    def __init__(
        self,
        name: str,
        calibration: Served,
        test: Served,
        judges: list[str],
        method: str,
        clean_accuracy: float | None,
    ):
        self.name, self.test = name, test
        self.detectors = sorted(calibration.scores)
        self.scorers = m.build_scorers(self.detectors, calibration.scores, BASELINES, judges, method)
        self.summary = {
            "detectors": self.detectors,
            "ensemble": judges,
            "ensemble_method": method,
            "n_calibration": len(calibration.verdicts),
            "n_test": len(test.verdicts),
            "clean_accuracy": clean_accuracy,
            "clean_flag_rate": flag_rate(served_flags(test)),
            "clean_fpr": {s: sc.clean_fpr(test.scores) for s, sc in self.scorers.items()},
            "scorers": {s: sc.describe() for s, sc in self.scorers.items()},
        }

    def row(
        self,
        attack: str,
        eps,
        kind: str,
        served: Served,
        eligible: np.ndarray,
        successful: np.ndarray,
        surrogate_asr: float | None,
        curves: dict,
        suffix: str = "",
    ) -> dict:
        positives = m.subset(served.scores, successful)
        key = (f"{attack}" if eps is None else f"{attack}_eps{eps:g}") + suffix
        title = f"{attack}{'' if eps is None else f' eps {eps:g}'} on {self.name}: {int(successful.sum())} successful"
        curves[key] = (
            title,
            {s: (sc.continuous(self.test.scores), sc.continuous(positives)) for s, sc in self.scorers.items()}
            if successful.any()
            else {},
        )
        # Succeeded AND not flagged by the gateway's ensemble at 5%: what gets through under `enforce`.
        unflagged = ~self.scorers["ensemble"].flags(served.scores, m.AUROC_FPR)
        detected = flag_rate(served_flags(served)[successful])
        return {
            "key": key,
            "attack": attack,
            "eps": eps,
            "kind": kind,
            "model": self.name,
            "n": len(served.verdicts),
            "eligible": int(eligible.sum()),
            "successful": int(successful.sum()),
            "asr": m.attack_success_rate(eligible, successful),
            "surrogate_asr": surrogate_asr,
            "evasion_rate@0.05": m.attack_success_rate(eligible, successful & unflagged),
            # Detection of the successful examples by the gateway's own verdicts (served thresholds).
            "served": {"detected": detected["flagged"], "successful": detected["n"], "rate": detected["rate"]},
            "scorers": {s: sc.evaluate(self.test.scores, positives) for s, sc in self.scorers.items()},
        }


def matches_config(directory: Path, model: ModelReference) -> bool:
    """Whether the ensemble's 5% thresholds, refitted on the gateway's calibration scores, are the
    thresholds in the model's config.toml (i.e. the gateway's own ensemble was measured)."""
    ensemble = load_model_config(directory).detection.ensemble
    # The scorer combines by the config's own method: a Fisher unless the ensemble is a union.
    fitted = model.scorers["ensemble"].combiners[m.AUROC_FPR]
    if isinstance(fitted, Fisher):
        same = _close(ensemble.threshold, fitted.threshold) and (
            fitted.min_p_threshold is None or _close(ensemble.min_p_threshold, fitted.min_p_threshold)
        )
    else:
        configured = configured_thresholds(directory)
        same = configured.keys() == fitted.thresholds.keys() and all(
            _close(configured[k], t) for k, t in fitted.thresholds.items()
        )
    if not same:
        log.warning(
            "%s: thresholds refitted from the gateway's scores differ from %s/config.toml", model.name, directory
        )
    return same


def _close(configured: float | None, fitted: float) -> bool:
    """Whether a configured threshold is the refitted one (None: the config lacks it)."""
    return configured is not None and bool(np.isclose(configured, fitted, rtol=1e-6))
