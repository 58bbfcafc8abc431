"""Thresholds and ensemble statistics from clean reference samples: the one procedure that
`guard calibrate` runs where a model is brought in, and the server runs where it is served.

1. Score the references with the model's pipeline, exactly as requests are scored. Detectors that
   learn clean statistics on the references themselves (Mahalanobis, STRIP's blend images) must
   not be judged on the samples they learned from: their scores are cross-fitted, each fold
   scored by a copy fitted on the other folds (the detectors that serve are fitted on all).
2. With per-camera baselines, re-express each camera's scores after its warm-up against that
   warm-up, exactly as the server will (guard.detection.baselines.simulate): the decision is fitted
   on what it will judge.
3. Fit the decision on those scores: a union sharing the false-positive budget, or a Fisher /
   omnibus ensemble whose clean references are the scores themselves; each detector also gets
   its threshold at the target alone (monitors, and attribution under an ensemble).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from guard.detection.baselines import BaselineSettings, Factory, simulate
from guard.detection.bounds import DEFAULT_CONFIDENCE
from guard.detection.calibration.references import References
from guard.detection.detectors import Detector, FitData
from guard.detection.ensemble import Fisher
from guard.detection.pipeline import GuardPipeline
from guard.detection.thresholds import fit_thresholds, flag_rates

PipelineFor = Callable[[list[Detector]], GuardPipeline]
"""Builds the model's pipeline (its backend, preprocessing and outputs) around given detectors."""


@dataclass(frozen=True)
class DecisionSettings:
    method: str = "omnibus"
    """union, fisher or omnibus (guard.detection.ensemble)."""
    target_fpr: float = 0.05
    confidence: float = DEFAULT_CONFIDENCE
    folds: int = 5
    """Cross-fitting folds for detectors that learn from the references (0: they learned elsewhere)."""
    seed: int = 0
    baseline: BaselineSettings | None = None
    """Per-camera baselines: the references' `cameras` say which rows warm up which camera."""


@dataclass
class Decision:
    thresholds: dict[str, float]
    """Every detector's own threshold."""
    combiner: Fisher | None
    """fisher and omnibus: the ensemble (its references are the calibration scores); None for a union."""
    calibration_fpr: float
    """Share of the references the model's decision flags (within the bound by construction)."""
    scores: dict[str, np.ndarray]
    """Every detector's scores on the references (cross-fitted where they learn from them)."""
    factory: Factory | None = None
    """With per-camera baselines: every detector's clean location and spread, over all cameras."""
    unmapped: dict[str, np.ndarray] | None = None
    """With per-camera baselines: every reference row's scores before mapping (`scores` holds the
    mapped rows after each camera's warm-up, what the decision was fitted on)."""

    def flags(self, scores: dict[str, np.ndarray], judges: list[str]) -> np.ndarray:
        """Whether the decision flags each row of `scores`."""
        if self.combiner is not None:
            return self.combiner.ratio({k: scores[k] for k in judges}) >= 1.0
        flagged: np.ndarray = np.logical_or.reduce([np.asarray(scores[k]) >= self.thresholds[k] for k in judges])
        return flagged


def chunks(references: References, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, references.rows, batch_size):
        yield {
            name: np.ascontiguousarray(value[start : start + batch_size]) for name, value in references.inputs.items()
        }


def score(
    pipeline: GuardPipeline, references: References, batch_size: int = 64, desc: str = "scoring"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every detector's scores and the model's logits for the references, batch by batch."""
    scores: dict[str, list[np.ndarray]] = {d.name: [] for d in pipeline.detectors}
    logits = []
    with torch.inference_mode():
        for chunk in tqdm(list(chunks(references, batch_size)), desc=desc, unit="batch", leave=False):
            result = pipeline.run(pipeline.batch([chunk]))
            for name, value in result.scores.items():
                scores[name].append(value)
            logits.append(result.outputs[pipeline.logits_output])
    return {k: np.concatenate(v) for k, v in scores.items()}, np.concatenate(logits)


def fit_data(pipeline: GuardPipeline, references: References, batch_size: int = 256) -> FitData:
    """What learning detectors fit on: the guarded rows, labels, logits and features."""
    names = [pipeline.logits_output, *([pipeline.features_output] if pipeline.features_output else [])]
    parts = []
    with torch.inference_mode():
        for chunk in chunks(references, batch_size):
            parts.append(pipeline.outputs(pipeline.batch([chunk]), names))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    features = merged.get(pipeline.features_output) if pipeline.features_output else None
    return FitData(merged["guarded"], references.labels, merged[pipeline.logits_output], features)


def fit_learners(detectors: list[Detector], data: FitData) -> None:
    for detector in detectors:
        if detector.learns:
            detector.fit(data)


def fold_assignment(references: References, folds: int, seed: int) -> np.ndarray:
    """Each reference row's cross-fitting fold. Rows from cameras are frames in time order, and a
    frame's neighbours are nearly the same picture: random folds would score each frame by a copy
    fitted on its neighbours, as if in sample (on real footage a learner's clean scores then come
    out several times lower than on frames it never saw). So each camera's frames are cut into
    `folds` contiguous stretches of time; other references are assigned at random."""
    if references.cameras is None:
        return np.random.default_rng(seed).permutation(references.rows) % folds
    fold_of = np.empty(references.rows, dtype=np.int64)
    for camera in dict.fromkeys(references.cameras.tolist()):
        rows = np.flatnonzero(references.cameras == camera)
        fold_of[rows] = np.arange(len(rows)) * folds // len(rows)
    return fold_of


def cross_fitted_scores(
    pipeline_for: PipelineFor,
    detectors: list[Detector],
    references: References,
    folds: int,
    seed: int,
    desc: str = "calibration",
) -> dict[str, np.ndarray]:
    """Every detector's reference scores; a learner's row is scored by a copy fitted on the other folds."""
    learners = [d for d in detectors if d.learns] if folds >= 2 else []
    others = [d for d in detectors if d not in learners]
    scores: dict[str, np.ndarray] = {}
    if others:
        scores.update(score(pipeline_for(others), references, desc=desc)[0])
    if learners:
        fold_of = fold_assignment(references, folds, seed)
        full = fit_data(pipeline_for(learners), references)
        found = {d.name: np.empty(references.rows) for d in learners}
        for k in tqdm(range(folds), desc=f"{desc} (cross-fitted)", unit="fold", leave=False):
            rest, held = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
            copies = [copy.deepcopy(d) for d in learners]
            fit_learners(
                copies,
                FitData(
                    full.x[rest],
                    None if full.y is None else full.y[rest],
                    full.logits[rest],
                    None if full.features is None else full.features[rest],
                ),
            )
            fold_scores, _ = score(pipeline_for(copies), references.take(held), desc=f"fold {k}")
            for name, value in fold_scores.items():
                found[name][held] = value
        scores.update(found)
    return {d.name: scores[d.name] for d in detectors}


def decide(scores: dict[str, np.ndarray], detectors: list[Detector], settings: DecisionSettings) -> Decision:
    """Thresholds (and the ensemble) for these clean scores at the target."""
    judges = {d.name: scores[d.name] for d in detectors if not d.monitor}
    t, c = settings.target_fpr, settings.confidence
    # Alone at the target: monitors (so their score/threshold reads like the others') and, under an
    # ensemble, every detector (its threshold then only names who fired).
    alone = {d.name: fit_thresholds({d.name: scores[d.name]}, t, c).thresholds[d.name] for d in detectors}
    if not judges:  # monitors only: they report, nothing decides, so nothing is flagged
        return Decision(alone, None, 0.0, scores)
    if settings.method in ("fisher", "omnibus"):
        combiner = Fisher.fit(judges, t, omnibus=settings.method == "omnibus", confidence=c)
        return Decision(alone, combiner, float((combiner.ratio(judges) >= 1.0).mean()), scores)
    fit = fit_thresholds(judges, t, c)
    return Decision({**alone, **fit.thresholds}, None, fit.calibration_fpr, scores)


def derive(
    pipeline_for: PipelineFor, detectors: list[Detector], references: References, settings: DecisionSettings
) -> Decision:
    """Scores (cross-fitted where needed) then the decision: what calibration and recalibration share."""
    scores = cross_fitted_scores(pipeline_for, detectors, references, settings.folds, settings.seed)
    if settings.baseline is None:
        return decide(scores, detectors, settings)
    if references.cameras is None:
        raise ValueError(
            "per-camera baselines need references that say which camera each row comes from "
            "(`guard calibrate --data` with one video or folder per camera)"
        )
    chosen = settings.baseline.judged([d.name for d in detectors])
    factory = Factory.fit({name: scores[name] for name in chosen}, references.cameras)
    mapped, _, factory = simulate(
        scores, references.cameras, settings.baseline, factory, draws=settings.baseline.calibration_draws
    )
    decision = decide(mapped, detectors, settings)
    decision.factory, decision.unmapped = factory, scores
    return decision


def per_detector_rates(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> dict[str, float]:
    return flag_rates(scores, {k: thresholds[k] for k in scores})[0]
