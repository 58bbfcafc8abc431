"""Robust accuracy under PGD (ICLR 2018, L-inf) for the digits recipes' model cards.

The attack is guard's one copy of PGD (guard.tools.evaluation.pgd.untargeted_pgd): seeded random
start from the caller's generator, signed-gradient steps, projection onto the eps-ball and [0, 1].
Adversarial training (guard_examples.training) uses the same function.
"""

from __future__ import annotations

import torch

from guard.api import untargeted_pgd


def robust_accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 40,
    step_size: float = 0.01,
    seed: int = 0,
    batch_size: int = 256,
) -> float:
    """Accuracy under PGD-`steps` with a random start (the paper's evaluation attack); the model is
    put in eval mode (batch statistics and dropout must not see the attack)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        adv = untargeted_pgd(model, xb, yb, eps, steps, step_size, gen) if eps > 0 else xb
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == yb).sum())
    return correct / len(x)


EVAL_EPS = (0.1, 0.2, 0.3)


def robust_section(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, onnx_path=None, eps_list: tuple[float, ...] = EVAL_EPS
) -> str:
    """Model-card text: clean and PGD-40 robust accuracy on the held-out split. With `onnx_path`,
    the examples are made on `model` (a white-box surrogate) and scored on the ONNX file, which
    is how robustness transfers to a quantized or exported copy."""
    import numpy as np
    import onnxruntime as ort

    model.eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]) if onnx_path else None

    def accuracy(inputs: torch.Tensor) -> float:
        if session is None:
            with torch.no_grad():
                return float((model(inputs).argmax(1) == y).float().mean())
        logits = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(inputs.numpy())})[0]
        return float((logits.argmax(1) == y.numpy()).mean())

    rows = [f"| clean | {accuracy(x):.4f} |"]
    for eps in eps_list:
        adv = torch.cat(
            [
                untargeted_pgd(model, x[i : i + 256], y[i : i + 256], eps, 40, 0.01, torch.Generator().manual_seed(0))
                for i in range(0, len(x), 256)
            ]
        )
        rows.append(f"| PGD-40, eps {eps} | {accuracy(adv):.4f} |")
    how = (
        "white-box PGD-40 on the FP32 weights, scored on this file"
        if onnx_path
        else "white-box PGD-40 (L-inf, random start, step 0.01)"
    )
    return f"Held-out test split, {how}.\n\n| inputs | accuracy |\n|---|---|\n" + "\n".join(rows)
