"""Adaptive attack: white-box PGD against the WHOLE guarded pipeline, on the FP32 surrogate.

The attacker knows everything the gateway does: the detectors, their parameters, their learned
artifacts (Mahalanobis statistics, STRIP's fixed references, the detector network's weights) and
their thresholds, all read from the evaluation model's directory. The guarded pipeline is rebuilt
on the surrogate with the gateway's own detector objects and their own code: each detector's
`differentiable_variants` (the bit-depth squeezer's rounding gets a straight-through gradient,
its true gradient being zero almost everywhere), the pipeline's `detector_scores`, the detector
network's `logit` and the ensemble's `neg_log_p`. PGD then minimises

    relu(z_y - max_{j != y} z_j + KAPPA) + sum_d relu(score_d(x) / threshold_d - 1 + MARGIN)

i.e. misclassify with a logit margin while keeping every detector a MARGIN below its threshold
(margins absorb the surrogate-to-INT8 transfer). KAPPA and MARGIN are fixed a priori, not tuned.
Against a Fisher or omnibus ensemble the detector hinges are replaced by hinges on the ensemble's
own statistics, relu(T / T_threshold - 1 + MARGIN) (and the same on -log of the smallest p-value
for omnibus), with each p-value made differentiable (guard.detection.ensemble.Fisher.neg_log_p).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from guard.detection.detectors import build_detectors
from guard.detection.detectors.network import DetectorNetwork
from guard.detection.pipeline import detector_scores
from guard.serving.model_config import load_model_config
from guard.serving.runtime import load_combiner
from guard.tools.evaluation.pgd import linf_pgd

KAPPA = 2.0
MARGIN = 0.2


class GuardedSurrogate(nn.Module):
    """The surrogate network plus every detector of `model_dir` (thresholds included), in torch.

    `net(x)` must return (logits [B, C], features [B, D]): the penultimate features the served
    model exposes to feature-space detectors (guard.backends.onnx_torch.OnnxClassifier.surrogate
    gives that for an ONNX file)."""

    def __init__(self, net: nn.Module, model_dir: Path):
        super().__init__()
        self.net = net.eval()
        config = load_model_config(model_dir)
        cpu = torch.device("cpu")
        self.detectors = [d.to(cpu) for d in build_detectors(config.path, config.detection.detectors)]
        self.thresholds = {d.name: d.calibrated_threshold() for d in self.detectors}
        self.fisher = load_combiner(config, self.detectors)  # the gateway's own loader and checks

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(logits [B, C], each detector's [B] scores, features [B, D]), as the gateway's pipeline
        computes them, through the detectors' differentiable variants."""
        batch = x.shape[0]
        stacked = torch.cat([x, *(d.differentiable_variants(x) for d in self.detectors)])
        logits, features = self.net(stacked)
        scores = detector_scores(self.detectors, logits, batch, features)
        return logits[:batch], scores, features[:batch]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, scores, _ = self._run(x)
        return logits, scores

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-row attack loss; zero means misclassified by KAPPA and every detector MARGIN below."""
        logits, scores, features = self._run(x)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), -torch.inf).amax(1)
        loss = torch.relu(true - other + KAPPA)
        if self.fisher is not None:
            neg_log_p = torch.stack([self.fisher.neg_log_p(name, scores[name]) for name in self.fisher.references])
            loss = loss + torch.relu(2.0 * neg_log_p.sum(0) / self.fisher.threshold - 1.0 + MARGIN)
            if self.fisher.min_p_threshold is not None:  # omnibus: the smallest p-value too
                loss = loss + torch.relu(neg_log_p.amax(0) / self.fisher.min_p_threshold - 1.0 + MARGIN)
            return loss
        for d in self.detectors:
            if d.monitor:  # never flags, so nothing to evade
                continue
            limit = self.thresholds[d.name] * (1.0 - MARGIN)
            if isinstance(d, DetectorNetwork):
                # Its score is softplus(logit), whose gradient vanishes on clean features: the hinge
                # score / threshold - 1 + MARGIN > 0 is taken in the equivalent form
                # logit > softplus^-1(threshold * (1 - MARGIN)) = log(expm1(...)), whose gradient does not.
                loss = loss + torch.relu(d.logit(features) - float(np.log(np.expm1(limit))))
            else:
                loss = loss + torch.relu(scores[d.name] / self.thresholds[d.name] - 1.0 + MARGIN)
        return loss


def adaptive_pgd(
    guarded: GuardedSurrogate,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    steps: int = 100,
    alpha: float = 0.01,
    seed: int = 0,
    batch_size: int = 128,
) -> np.ndarray:
    """L-inf PGD (random start) minimising GuardedSurrogate.loss; keeps each row's best iterate."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, len(x), batch_size), desc=f"adaptive eps {eps:g}", unit="batch", leave=False):
        x0 = torch.from_numpy(np.array(x[start : start + batch_size], np.float32))
        yb = torch.from_numpy(np.array(y[start : start + batch_size], np.int64))
        best = linf_pgd(partial(guarded.loss, y=yb), x0, eps, steps, alpha, gen, keep_best=True)
        out.append(best.numpy())
    return np.concatenate(out).astype(np.float32)
