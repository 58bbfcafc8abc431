"""Trigger reverse-engineering in the spirit of Neural Cleanse (IEEE S&P 2019).

For every class t, find the smallest mask m and pattern p such that x' = (1 - m) * x + m * p
sends clean inputs of other classes to t. A backdoored class needs a much smaller mask than the
others (the trigger is a shortcut), so its mask L1 norm is an outlier on the low side.

Anomaly index: |norm - median| / (1.4826 * MAD) over the per-class norms (1.4826 makes the MAD
a consistent estimator of the standard deviation under normality); classes below the median with
index > 2 are flagged, as in the paper.

Optimisation: all classes are optimised together in one batched forward pass (their losses are
independent, so this equals ten separate runs, ten times fewer Python steps). The mask and
pattern are tanh-parameterised to stay in [0, 1]; the L1 weight (cost) follows the paper's
schedule: multiplied by 1.5 after `patience` steps at >= `attack_threshold` success, divided by
1.5^1.5 after `patience` steps below it. The reported mask is the smallest one seen at that
success rate on the step's mini-batch, re-checked on all samples at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

CONSISTENCY = 1.4826


@dataclass(frozen=True)
class CleanseOptions:
    steps: int = 400
    """Optimisation steps (every class at once)."""
    batch_size: int = 64
    """Clean samples per class per step, drawn from samples not labelled with that class."""
    lr: float = 0.1
    init_cost: float = 1e-3
    """Initial weight of the mask's L1 norm in the loss."""
    attack_threshold: float = 0.99
    """Success rate a mask must reach to count (the paper's 99%)."""
    patience: int = 10
    anomaly_threshold: float = 2.0
    seed: int = 0

    def describe(self) -> dict:
        return asdict(self)


@dataclass
class CleanseResult:
    mask_norms: np.ndarray
    """L1 norm of each class's smallest successful mask, [classes]."""
    success: np.ndarray
    """Attack success of each reported mask + pattern on all clean samples of other classes."""
    anomaly: np.ndarray
    """Anomaly index per class (>= 0)."""
    flagged: list[int]
    masks: np.ndarray
    """[classes, H, W] in [0, 1]."""
    patterns: np.ndarray
    """[classes, C, H, W] in [0, 1]."""


def anomaly_indices(norms: np.ndarray) -> np.ndarray:
    """|norm - median| / (1.4826 * MAD); a zero MAD (all equal) gives zeros."""
    norms = np.asarray(norms, dtype=np.float64)
    median = np.median(norms)
    mad = CONSISTENCY * np.median(np.abs(norms - median))
    return np.abs(norms - median) / mad if mad > 0 else np.zeros_like(norms)


def flagged_classes(norms: np.ndarray, threshold: float = 2.0) -> list[int]:
    """Classes whose norm is below the median with an anomaly index above `threshold`."""
    index = anomaly_indices(norms)
    return [int(c) for c in np.flatnonzero((np.asarray(norms) < np.median(norms)) & (index > threshold))]


def _unbounded(values: torch.Tensor) -> torch.Tensor:
    return torch.atanh((values - 0.5) * 2 * (1 - 1e-4))


def _apply(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """x: [K, B, C, H, W]; mask [K, 1, 1, H, W]; pattern [K, 1, C, H, W]."""
    return (1 - mask) * x + mask * pattern


def neural_cleanse(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray | None,
    num_classes: int,
    options: CleanseOptions = CleanseOptions(),
    progress: bool = True,
) -> CleanseResult:
    """Reverse-engineer one trigger per class from clean samples `x` [N, C, H, W] in [0, 1].

    With labels `y`, class t's trigger is fitted on samples not labelled t (those already are t);
    without labels, on samples the model does not already predict as t.
    """
    gen = torch.Generator().manual_seed(options.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if y is None:
        with torch.no_grad():
            y = model(xt).argmax(1).numpy()
    pools = [torch.from_numpy(np.flatnonzero(np.asarray(y) != t)) for t in range(num_classes)]
    if min(len(p) for p in pools) == 0:
        raise ValueError("every class needs clean samples of other classes")
    k, (c, h, w) = num_classes, xt.shape[1:]
    mask_param = _unbounded(torch.rand((k, 1, 1, h, w), generator=gen)).requires_grad_(True)
    pattern_param = _unbounded(torch.rand((k, 1, c, h, w), generator=gen)).requires_grad_(True)
    opt = torch.optim.Adam([mask_param, pattern_param], lr=options.lr, betas=(0.5, 0.9))
    targets = torch.arange(k).repeat_interleave(options.batch_size)
    cost = torch.full((k,), options.init_cost)
    up, down = torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)
    best_norm = torch.full((k,), float("inf"))
    best_mask, best_pattern = torch.zeros(k, 1, 1, h, w), torch.zeros(k, 1, c, h, w)
    for _ in tqdm(range(options.steps), desc="neural cleanse", disable=not progress):
        picks = torch.stack([p[torch.randint(len(p), (options.batch_size,), generator=gen)] for p in pools])
        batch = xt[picks]  # [K, B, C, H, W]
        mask = torch.tanh(mask_param) / 2 + 0.5
        pattern = torch.tanh(pattern_param) / 2 + 0.5
        logits = model(_apply(batch, mask, pattern).reshape(-1, c, h, w))
        ce = F.cross_entropy(logits, targets, reduction="none").reshape(k, -1).mean(1)
        norms = mask.reshape(k, -1).sum(1)
        loss = (ce + cost * norms).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            success = (logits.argmax(1) == targets).float().reshape(k, -1).mean(1)
            reached = success >= options.attack_threshold
            better = reached & (norms < best_norm)
            best_norm = torch.where(better, norms.detach(), best_norm)
            best_mask[better], best_pattern[better] = mask[better].detach(), pattern[better].detach()
            # The paper's cost schedule: grow the L1 weight while attacks succeed, shrink it otherwise.
            up, down = torch.where(reached, up + 1, 0), torch.where(reached, 0, down + 1)
            cost = torch.where(up >= options.patience, cost * 1.5, cost)
            cost = torch.where(down >= options.patience, cost / 1.5**1.5, cost)
            up, down = torch.where(up >= options.patience, 0, up), torch.where(down >= options.patience, 0, down)
    never = torch.isinf(best_norm)  # no mask reached the threshold: report the last one, marked by its success
    with torch.no_grad():
        last_mask, last_pattern = torch.tanh(mask_param) / 2 + 0.5, torch.tanh(pattern_param) / 2 + 0.5
    best_mask[never], best_pattern[never] = last_mask[never], last_pattern[never]
    success = np.zeros(k)
    with torch.no_grad():
        for t in range(k):
            triggered = _apply(xt[pools[t]][None], best_mask[t : t + 1], best_pattern[t : t + 1])[0]
            success[t] = float((model(triggered).argmax(1) == t).float().mean())
    mask_norms = best_mask.reshape(k, -1).sum(1).numpy().astype(np.float64)
    return CleanseResult(
        mask_norms=mask_norms,
        success=success,
        anomaly=anomaly_indices(mask_norms),
        flagged=flagged_classes(mask_norms, options.anomaly_threshold),
        masks=best_mask[:, 0, 0].numpy(),
        patterns=best_pattern[:, 0].numpy(),
    )
