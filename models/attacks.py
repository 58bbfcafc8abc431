"""PGD (Madry et al. 2018), L-inf, for adversarial training and robust-accuracy evaluation.

The evaluation harness (guard evaluate) uses torchattacks; training needs a seeded PGD whose
random start draws from the recipe's own generator, so it is written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
        random_start: bool = True, gen: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial examples within the L-inf ball of radius eps around x, clipped to [0, 1].

    The model is put in eval mode (batch statistics and dropout must not see the attack) and the
    caller restores train mode if needed.
    """
    model.eval()
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=gen) * 2 * eps - eps
        adv = (x + noise).clamp(0.0, 1.0)
    else:
        adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv + step_size * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
    return adv.detach()


def robust_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40,
                    step_size: float = 0.01, seed: int = 0, batch_size: int = 256) -> float:
    """Accuracy under PGD-`steps` with a random start (the paper's evaluation attack)."""
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        adv = pgd(model, xb, yb, eps, steps, step_size, gen=gen) if eps > 0 else xb
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == yb).sum())
    return correct / len(x)
