"""L-inf PGD (ICLR 2018) on any per-row loss: the one copy of the rule in guard.

The adaptive attack (adaptive.py) minimises its loss on the whole guarded pipeline and keeps each
row's best iterate; `guard audit` maximises cross-entropy on a model; the attacks on image models
(image_attacks.py) minimise a success rule's loss on 8-bit frames. All are this walk: a
seeded random start in the eps-ball, signed-gradient steps, projection back onto the ball and
the [0, 1] box after every step. torchattacks' PGD is not used for them because its random start
draws from torch's global generator, and an audit or attack must be reproducible from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def linf_pgd(
    loss: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    steps: int,
    alpha: float,
    gen: torch.Generator | None = None,
    random_start: bool = True,
    keep_best: bool = False,
    levels: int | None = None,
) -> torch.Tensor:
    """Minimise `loss(adv)` ([B] per-row losses) over the L-inf ball of radius eps around x,
    within [0, 1]. With `keep_best`, each row's lowest-loss iterate (of steps + 1) comes back;
    otherwise the last one.

    With `levels` (255 for 8-bit images; x must lie on that grid), every iterate is snapped to the
    grid, at most floor(eps * levels) levels from x: the walk then only visits images a lossless
    8-bit file carries exactly, so the loss it keeps is that of the image that is sent (rounding
    after the walk could undo a perturbation of a level or two, and could leave the ball)."""
    x = x.detach()
    adv = ((x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps) if random_start else x.clone()).clamp(0.0, 1.0)
    if levels is not None:
        adv = _snap(adv, x, eps, levels)
    best, best_loss = adv.clone(), torch.full((len(x),), torch.inf)
    for step in range(steps + 1 if keep_best else steps):
        adv.requires_grad_(True)
        value = loss(adv)
        (grad,) = torch.autograd.grad(value.sum(), adv)
        with torch.no_grad():
            if keep_best:
                better = value < best_loss
                best[better], best_loss[better] = adv[better].detach(), value[better].detach()
            if step == steps:  # the extra pass only scored the last iterate
                break
            adv = adv - alpha * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
            if levels is not None:
                adv = _snap(adv, x, eps, levels)
    return best if keep_best else adv.detach()


def _snap(adv: torch.Tensor, x: torch.Tensor, eps: float, levels: int) -> torch.Tensor:
    """adv on the grid of x + k / levels, |k| <= floor(eps * levels), within [0, 1]."""
    reach = math.floor(eps * levels + 1e-6)  # 1e-6: eps = 8 / 255 must reach 8 levels
    steps = torch.round((adv - x) * levels).clamp(-reach, reach)
    return (x + steps / levels).clamp(0.0, 1.0)


def untargeted_pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    alpha: float,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """The classic attack: raise the cross-entropy of the true labels (random start)."""
    return linf_pgd(lambda adv: -F.cross_entropy(model(adv), y, reduction="none"), x, eps, steps, alpha, gen)
