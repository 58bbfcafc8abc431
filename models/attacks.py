"""PGD (ICLR 2018), L-inf, for adversarial training and robust-accuracy evaluation.

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


EVAL_EPS = (0.1, 0.2, 0.3)


def robust_section(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, onnx_path=None,
                   eps_list: tuple[float, ...] = EVAL_EPS) -> str:
    """Model-card text: clean and PGD-40 robust accuracy on the held-out split. With `onnx_path`,
    the examples are made on `model` (a white-box surrogate) and scored on the ONNX file, which
    is how robustness transfers to a quantized or exported copy."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]) if onnx_path else None

    def accuracy(inputs: torch.Tensor) -> float:
        if session is None:
            with torch.no_grad():
                return float((model(inputs).argmax(1) == y).float().mean())
        logits = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(inputs.numpy())})[0]
        return float((logits.argmax(1) == y.numpy()).mean())

    rows = [f"| clean | {accuracy(x):.4f} |"]
    for eps in eps_list:
        adv = torch.cat([pgd(model, x[i:i + 256], y[i:i + 256], eps, 40, 0.01, gen=torch.Generator().manual_seed(0))
                         for i in range(0, len(x), 256)])
        rows.append(f"| PGD-40, eps {eps} | {accuracy(adv):.4f} |")
    how = ("white-box PGD-40 on the FP32 weights, scored on this file" if onnx_path
           else "white-box PGD-40 (L-inf, random start, step 0.01)")
    return f"Held-out test split, {how}.\n\n| inputs | accuracy |\n|---|---|\n" + "\n".join(rows)
