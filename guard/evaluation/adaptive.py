"""Adaptive attack: white-box PGD against the WHOLE guarded pipeline, on the FP32 surrogate.

The attacker knows everything the gateway does: the detectors, their parameters, their learned
artifacts (Mahalanobis statistics, STRIP's fixed references, the detector network's weights) and
their thresholds, all read from the evaluation model's directory. The guarded pipeline is rebuilt
in torch on the surrogate with the gateway's own detector objects and the same torch ops
(guard.squeezers, each detector's `score`); the only substitution is the straight-through
estimator for bit-depth rounding, whose true gradient is zero almost everywhere (and the detector
network's hinge is taken on its pre-sigmoid logit, the same condition, see _network_logit). PGD then
minimises

    relu(z_y - max_{j != y} z_j + KAPPA) + sum_d relu(score_d(x) / threshold_d - 1 + MARGIN)

i.e. misclassify with a logit margin while keeping every detector a MARGIN below its threshold
(margins absorb the surrogate-to-INT8 transfer). KAPPA and MARGIN are fixed a priori, not tuned.
Against a Fisher or omnibus ensemble the detector hinges are replaced by hinges on the ensemble's
own statistics, relu(T / T_threshold - 1 + MARGIN) (and the same on -log of the smallest p-value
for omnibus), with each p-value made differentiable: the
empirical survival function is interpolated linearly between the sorted clean scores, and the
exponential tail above them is guard.ensemble's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from guard import squeezers
from guard.config import load_model_config
from guard.detectors import Outputs, build_detectors
from guard.ensemble import Fisher
from guard.detectors.squeezing import BitDepthDetector, MedianDetector

try:  # the learned detector may be absent from older checkouts
    from guard.detectors.network import DetectorNetwork
except ImportError:  # pragma: no cover
    DetectorNetwork = type("DetectorNetwork", (), {})

KAPPA = 2.0
MARGIN = 0.2


def _bit_depth_ste(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = float(2**bits - 1)
    return x + (torch.round(x * levels) / levels - x).detach()


def _median(x: torch.Tensor, size: int) -> torch.Tensor:
    """guard.squeezers.median, op for op, minus its index cache: the cache may hold tensors made
    under torch.inference_mode (by a gateway in this process), which autograd refuses to save."""
    if size == 1:
        return x
    height, width = x.shape[-2:]
    before, after = size // 2, size - 1 - size // 2
    index = squeezers._symmetric_index.__wrapped__
    padded = x.index_select(-2, index(height, before, after, x.device)).index_select(
        -1, index(width, before, after, x.device))
    if size == 2:
        return squeezers._upper_median_2x2(padded, height, width)
    windows = padded.unfold(-2, size, 1).unfold(-2, size, 1)
    return windows.reshape(*windows.shape[:-2], size * size).kthvalue(size * size // 2 + 1, dim=-1).values


def _network_logit(detector, features: torch.Tensor) -> torch.Tensor:
    """The detector network's logit. Its score is softplus(logit), whose gradient vanishes on clean
    features: the hinge score / threshold - 1 + MARGIN > 0 is taken in the equivalent form
    logit > softplus^-1(threshold * (1 - MARGIN)) = log(expm1(...)), whose gradient does not."""
    t = detector.tensors
    hidden = torch.relu(((features - t["mean"]) / t["std"]) @ t["w1"].T + t["b1"])
    return (hidden @ t["w2"].T + t["b2"]).squeeze(-1)


def _smooth_neg_log_p(fisher: Fisher, name: str, score: torch.Tensor) -> torch.Tensor:
    """-log p of guard.ensemble.Fisher, differentiable in the score: linear between the sorted
    clean scores (where the gateway's p is a step function), the same exponential tail above u."""
    reference = torch.as_tensor(fisher.references[name], dtype=score.dtype)
    n = reference.shape[0]
    survival = (1.0 + n - torch.arange(n, dtype=score.dtype)) / (n + 1.0)  # p at each sorted clean score
    s = score.clamp(float(reference[0]), float(reference[-1]))
    upper = torch.searchsorted(reference, s.detach()).clamp(1, n - 1)
    lo, hi = reference[upper - 1], reference[upper]
    weight = (s - lo) / (hi - lo).clamp_min(1e-12)
    body = survival[upper - 1] + weight * (survival[upper] - survival[upper - 1])
    u, scale, m = Fisher._tail(fisher.references[name])
    tail = (m + 1.0) / (n + 1.0) * torch.exp(-(score - u) / scale)
    p = torch.where(score > u, torch.minimum(body, tail), body)
    return -torch.log(p.clamp_min(1e-300))


class GuardedSurrogate(nn.Module):
    """The surrogate network plus every detector of `model_dir` (thresholds included), in torch."""

    def __init__(self, net: nn.Module, model_dir: Path):
        super().__init__()
        self.net = net.eval()
        config = load_model_config(model_dir)
        cpu = torch.device("cpu")
        self.detectors = [d.to(cpu) for d in build_detectors(model_dir / "config.toml", config.detectors)]
        self.thresholds = {d.name: float(d.threshold) for d in self.detectors}
        self.fisher = None
        if config.ensemble.method != "union":
            self.fisher = Fisher.load(model_dir / config.ensemble.references, config.ensemble.threshold,
                                      config.ensemble.min_p_threshold)

    def _variants(self, detector, x: torch.Tensor) -> torch.Tensor:
        if isinstance(detector, BitDepthDetector):
            return _bit_depth_ste(x, detector.bits)
        if isinstance(detector, MedianDetector):
            return _median(x, detector.size)
        return detector.variants(x)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(logits [B, C], each detector's [B] scores, features [B, D]), as guard.pipeline computes them."""
        batch = x.shape[0]
        stacked = torch.cat([x, *(self._variants(d, x) for d in self.detectors)])
        features = self.net.features(stacked)
        logits = self.net.head(features)
        grouped = logits.view(-1, batch, logits.shape[-1])
        feats = features.view(grouped.shape[0], batch, -1)
        probabilities = torch.softmax(grouped, dim=-1)
        original = Outputs(grouped[0], probabilities[0], feats[0])
        offset, scores = 1, {}
        for d in self.detectors:
            count = d.num_variants
            own = Outputs(grouped[offset:offset + count], probabilities[offset:offset + count],
                          feats[offset:offset + count]) if count else None
            offset += count
            scores[d.name] = d.score(original, own)
        return grouped[0], scores, feats[0]

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
            neg_log_p = torch.stack([_smooth_neg_log_p(self.fisher, name, scores[name]) for name in self.fisher.references])
            loss = loss + torch.relu(2.0 * neg_log_p.sum(0) / self.fisher.threshold - 1.0 + MARGIN)
            if self.fisher.min_p_threshold is not None:  # omnibus: the smallest p-value too
                loss = loss + torch.relu(neg_log_p.amax(0) / self.fisher.min_p_threshold - 1.0 + MARGIN)
            return loss
        for d in self.detectors:
            if d.monitor:  # never flags, so nothing to evade
                continue
            limit = self.thresholds[d.name] * (1.0 - MARGIN)
            if isinstance(d, DetectorNetwork):  # see _network_logit
                loss = loss + torch.relu(_network_logit(d, features) - float(np.log(np.expm1(limit))))
            else:
                loss = loss + torch.relu(scores[d.name] / self.thresholds[d.name] - 1.0 + MARGIN)
        return loss


def adaptive_pgd(guarded: GuardedSurrogate, x: np.ndarray, y: np.ndarray, eps: float, steps: int = 100,
                 alpha: float = 0.01, seed: int = 0, batch_size: int = 128) -> np.ndarray:
    """L-inf PGD (random start) minimising GuardedSurrogate.loss; keeps each row's best iterate."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, len(x), batch_size), desc=f"adaptive eps {eps:g}", unit="batch", leave=False):
        x0 = torch.from_numpy(np.array(x[start:start + batch_size], np.float32))
        yb = torch.from_numpy(np.array(y[start:start + batch_size], np.int64))
        adv = (x0 + (torch.rand(x0.shape, generator=gen) * 2 - 1) * eps).clamp(0.0, 1.0)
        best, best_loss = adv.clone(), torch.full((len(x0),), torch.inf)
        for _ in range(steps + 1):
            adv.requires_grad_(True)
            loss = guarded.loss(adv, yb)
            (grad,) = torch.autograd.grad(loss.sum(), adv)
            with torch.no_grad():
                better = loss < best_loss
                best[better], best_loss[better] = adv[better].detach(), loss[better].detach()
                adv = adv - alpha * grad.sign()
                adv = torch.min(torch.max(adv, x0 - eps), x0 + eps).clamp(0.0, 1.0)
        out.append(best.numpy())
    return np.concatenate(out).astype(np.float32)
