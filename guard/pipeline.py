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
             combiner: "Fisher | None" = None) -> list[Verdict]:
    """One verdict per request (a slice of rows): the worst row decides, flags are unioned.
    Monitor detectors are reported with the others but never flag. Without a combiner the
    detectors flag as a union (each against its threshold); with one, its statistic decides and
    `flagged_by` names the detectors over their own thresholds (or the most unusual one)."""
    if not detectors:
        return [Verdict(CLEAN, 0.0) for _ in rows]
    judges = [d for d in detectors if not d.monitor]
    ratios = np.stack([scores[d.name] / d.threshold for d in judges])  # [D, B]
    if combiner is not None:
        combined = combiner.ratio(scores)
        p_values = combiner.p_values(scores)
    results = []
    for span in rows:
        worst = ratios[:, span].max(axis=1)
        if combiner is None:
            score = float(worst.max())
            fired = [d for d, r in zip(judges, worst) if r >= 1.0]
        else:
            row = span.start + int(np.argmax(combined[span]))
            score = float(combined[row])
            fired = [d for d, r in zip(judges, worst) if r >= 1.0] if score >= 1.0 else []
            if score >= 1.0 and not fired:
                fired = [min(judges, key=lambda d: p_values[d.name][row])]
        kinds = {d.verdict for d in fired}
        verdict = TRIGGER if TRIGGER in kinds else ADVERSARIAL if kinds else CLEAN
        results.append(Verdict(
            verdict, score, tuple(d.name for d in fired),
            {d.name: float(scores[d.name][span].max()) for d in detectors},
        ))
    return results
