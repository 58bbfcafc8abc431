"""The guard pipeline, run once per batch: variants -> ONE backend call -> detector scores -> verdicts.

The model's outputs for the original rows come from the same backend call as the detectors'
variants, so a clean request costs no forward pass beyond the guard's own variants.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from guard.backends.base import Backend
from guard.detectors import Detector, Outputs
from guard.ensemble import Fisher
from guard.errors import GuardError, DetectorError
from guard.types import ADVERSARIAL, CLEAN, TRIGGER, Verdict


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]
    """The model's outputs for the original rows only."""
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    """Each detector's [B] scores."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per stage (squeeze, backend, detect)."""
    rows_sent: int = 0
    """Rows the backend ran: the originals plus every detector variant."""


class GuardPipeline:
    def __init__(self, backend: Backend, detectors: list[Detector], guarded_input: str,
                 logits_output: str, output_names: list[str], device: torch.device,
                 features_output: str | None = None):
        needs_features = [d.name for d in detectors if d.needs_features]
        if needs_features and features_output is None:
            raise DetectorError(f"detectors {needs_features} need the model's features: set features_output")
        self.features_output = features_output if needs_features else None
        self.backend = backend
        self.detectors = detectors
        self.guarded_input = guarded_input
        self.logits_output = logits_output
        self.output_names = output_names
        self.device = device

    def run(self, inputs: dict[str, np.ndarray], deadline: float | None = None) -> BatchResult:
        """Outputs and raw detector scores for one batch (rows along axis 0 of every input);
        `deadline` (time.monotonic) reaches the backend call."""
        if not self.detectors:
            return self._forward(inputs, deadline)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        x = torch.from_numpy(inputs[self.guarded_input]).to(self.device)
        batch = x.shape[0]
        try:
            extra = [d.variants(x) for d in self.detectors]
        except Exception as exc:
            raise DetectorError(f"building detector variants failed: {exc}") from exc
        copies = 1 + sum(d.num_variants for d in self.detectors)
        feeds = {name: np.concatenate([value] * copies) if copies > 1 else value
                 for name, value in inputs.items() if name != self.guarded_input}
        guarded = torch.cat([x, *extra]) if copies > 1 else x
        feeds[self.guarded_input] = np.ascontiguousarray(guarded.cpu().numpy())
        timings["squeeze"] = time.perf_counter() - start

        start = time.perf_counter()
        wanted = list(dict.fromkeys([*self.output_names, self.logits_output,
                                     *([self.features_output] if self.features_output else [])]))
        raw = self.backend.infer(feeds, wanted, deadline)
        timings["backend"] = time.perf_counter() - start

        start = time.perf_counter()
        outputs = {name: raw[name][:batch] for name in self.output_names}
        features = raw.get(self.features_output) if self.features_output else None
        scores = self._score(torch.from_numpy(raw[self.logits_output]).to(self.device), batch,
                             None if features is None else torch.from_numpy(features).to(self.device))
        timings["detect"] = time.perf_counter() - start
        return BatchResult(outputs, scores, timings, len(feeds[self.guarded_input]))

    def _forward(self, inputs: dict[str, np.ndarray], deadline: float | None) -> BatchResult:
        """No detectors: the original rows only, and no tensor conversions."""
        start = time.perf_counter()
        raw = self.backend.infer(inputs, self.output_names, deadline)
        rows = len(inputs[self.guarded_input])
        return BatchResult(raw, timings={"backend": time.perf_counter() - start}, rows_sent=rows)

    def _score(self, logits: torch.Tensor, batch: int, features: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        if not self.detectors:
            return {}
        # [1 + sum V, B, classes]: the original first, then each detector's variants in order.
        # Views only; softmax is computed once for every detector.
        grouped = logits.view(-1, batch, logits.shape[-1])
        probabilities = torch.softmax(grouped.float(), dim=-1)
        feats = None if features is None else features.reshape(grouped.shape[0], batch, -1).float()
        original = Outputs(grouped[0], probabilities[0], None if feats is None else feats[0])
        offset, scores = 1, []
        for detector in self.detectors:
            count = detector.num_variants
            own = Outputs(grouped[offset:offset + count], probabilities[offset:offset + count],
                          None if feats is None else feats[offset:offset + count]) if count else None
            offset += count
            try:
                scores.append(detector.score(original, own))
            except GuardError:
                raise
            except Exception as exc:
                raise DetectorError(f"detector {detector.name} failed: {exc}") from exc
        table = torch.stack(scores).double().cpu().numpy()  # one host copy for all detectors, [D, B]
        return {d.name: row for d, row in zip(self.detectors, table)}


def verdicts(detectors: list[Detector], scores: dict[str, np.ndarray], rows: list[slice],
             combiner: Fisher | None = None) -> list[Verdict]:
    """One verdict per request (a slice of rows): the worst row decides, flags are unioned.
    Monitor detectors are reported with the others but never flag. Without a combiner the
    detectors flag as a union (each against its threshold); with one, its statistic decides and
    `flagged_by` names the detectors over their own thresholds (or the most unusual one)."""
    if not detectors:
        return [Verdict(CLEAN, 0.0) for _ in rows]
    names = [d.name for d in detectors]
    judges = [i for i, d in enumerate(detectors) if not d.monitor]
    table = np.stack([scores[n] for n in names])  # [D, B], every detector
    ratios = table[judges] / np.array([[detectors[i].threshold] for i in judges])  # judges only
    fired = ratios >= 1.0
    if combiner is None:
        row_score = ratios.max(axis=0)
    else:
        p_values = combiner.p_values(scores)
        row_score = combiner.ratio(scores, p_values)
        flagged = row_score >= 1.0
        fired &= flagged
        # A flagged row on which no detector passes its own threshold names its most unusual one.
        unnamed = flagged & ~fired.any(axis=0)
        if unnamed.any():
            smallest = np.argmin(np.stack([p_values[names[i]] for i in judges]), axis=0)
            fired[smallest[unnamed], np.flatnonzero(unnamed)] = True
    # Python lists once: the per-request loop below then costs no numpy calls for 1-row requests.
    table_rows, fired_rows, score_rows = table.T.tolist(), fired.T.tolist(), row_score.tolist()
    judge_names = [names[i] for i in judges]
    trigger = [detectors[i].verdict == TRIGGER for i in judges]
    results = []
    for span in rows:
        if span.stop - span.start == 1:
            row = span.start
            score, row_fired, row_scores = score_rows[row], fired_rows[row], table_rows[row]
        else:
            score = float(row_score[span].max())
            row_fired = fired[:, span].any(axis=1).tolist()
            row_scores = table[:, span].max(axis=1).tolist()
        by = tuple(n for n, f in zip(judge_names, row_fired) if f)
        verdict = (TRIGGER if any(t for t, f in zip(trigger, row_fired) if f) else ADVERSARIAL) if by else CLEAN
        results.append(Verdict(verdict, float(score), by, dict(zip(names, row_scores))))
    return results
