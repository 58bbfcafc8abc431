"""The attack suite (torchattacks) on the plan's surrogate.

Attacks are white-box on the surrogate, the plan's ONNX file run as torch
(guard.backends.onnx_torch); when the gateway serves a different file (the demo serves the INT8
quantization of its FP32 surrogate), every adversarial example is a surrogate-to-served TRANSFER
and counts as successful only if the SERVED model misclassifies it.
Square is a score-based black-box attack, here querying the surrogate (not the gateway).
Parameters are fixed up front (standard values from the papers and torchattacks' defaults, fewer
iterations where the CPU budget asks for it); none is chosen by looking at test results.

REGISTRY maps an attack's name to its factory, `factory(model, spec) -> attack`, where
`attack(x, y)` returns adversarial examples of x (a torchattacks.Attack is one); an installed
package adds one through the entry-point group `guard.attacks` (guard.protocol.plugins), and a
plan's [[attacks]] names it (plan.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from guard.protocol.plugins import PluginRegistry

log = logging.getLogger("guard.tools.evaluation.attacks")

EPSILONS = (0.1, 0.2, 0.3)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    eps: float | None
    """L-inf budget; None for the minimal-perturbation L2 attacks (CW, DeepFool)."""
    params: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 128

    @property
    def key(self) -> str:
        return self.name if self.eps is None else f"{self.name}_eps{self.eps:g}"

    def build(self, model: torch.nn.Module):
        return AVAILABLE.get(self.name)(model, self)


AttackFactory = Callable[[torch.nn.Module, AttackSpec], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def _torchattacks(name: str, **fixed: Any) -> AttackFactory:
    """torchattacks.<name>(model, eps=spec.eps, **fixed, **spec.params); no eps for the L2 ones."""

    def factory(model: torch.nn.Module, spec: AttackSpec):
        import torchattacks  # lazy: only `guard evaluate` needs it

        eps = {} if spec.eps is None else {"eps": spec.eps}
        return getattr(torchattacks, name)(model, **eps, **fixed, **spec.params)

    return factory


def _attack_factory(name: str, value: object) -> AttackFactory:
    """The check for a plugin attack: a callable factory(model, spec) -> attack."""
    if not callable(value):
        raise TypeError(f"not a callable factory(model, spec) -> attack ({value!r})")
    return value


REGISTRY: dict[str, AttackFactory] = {
    "fgsm": _torchattacks("FGSM"),
    "pgd": _torchattacks("PGD"),
    "mifgsm": _torchattacks("MIFGSM"),
    "bim": _torchattacks("BIM"),
    "cw": _torchattacks("CW"),
    "deepfool": lambda model, spec: BatchedDeepFool(model, **spec.params),
    "square": _torchattacks("Square", norm="Linf"),
}
"""The built-in attacks."""
AVAILABLE = PluginRegistry("guard.attacks", REGISTRY, _attack_factory, "attack")
"""The built-ins plus the installed plugins: what a plan's [[attacks]] may name."""


def _batched_deepfool():
    import torchattacks

    class BatchedDeepFool(torchattacks.DeepFool):
        """torchattacks.DeepFool's exact update, vectorised over the batch: rows are independent,
        so the gradient of sum_rows logit_k is every row's own gradient of logit_k (the library
        loops image by image and class by class, ~100x slower on CPU)."""

        def forward(self, images, labels):
            adv = images.clone().detach().to(self.device)
            labels = labels.to(self.device)
            active = torch.ones(len(adv), dtype=torch.bool)
            for _ in range(self.steps):
                rows = active.nonzero().squeeze(1)
                if len(rows) == 0:
                    break
                x = adv[rows].clone().requires_grad_(True)
                logits = self.get_logits(x)
                fooled = logits.argmax(1) != labels[rows]
                grads = torch.stack(
                    [torch.autograd.grad(logits[:, k].sum(), x, retain_graph=True)[0] for k in range(logits.shape[1])],
                    1,
                )  # [B, K, ...]
                y = labels[rows]
                f_prime = logits.detach() - logits.detach().gather(1, y[:, None])
                w_prime = grads - grads[torch.arange(len(rows)), y][:, None]
                norms = w_prime.flatten(2).norm(dim=2)
                value = f_prime.abs() / norms
                value[torch.arange(len(rows)), y] = torch.inf
                best = value.argmin(1)
                w = w_prime[torch.arange(len(rows)), best]
                scale = f_prime.abs()[torch.arange(len(rows)), best] / w.flatten(1).norm(dim=1) ** 2
                delta = scale.view(-1, *[1] * (w.dim() - 1)) * w
                step = torch.clamp(x.detach() + (1 + self.overshoot) * delta, 0, 1)
                adv[rows[~fooled]] = step[~fooled]
                active[rows[fooled]] = False
            return adv.detach()

    return BatchedDeepFool


def BatchedDeepFool(model, **params):
    return _batched_deepfool()(model, **params)


def attack_suite(quick: bool = False, epsilons: tuple[float, ...] = EPSILONS) -> list[AttackSpec]:
    """FGSM, PGD-40, MI-FGSM and BIM at every eps; CW-L2 and DeepFool; Square at eps 0.3.

    CW and DeepFool run torchattacks' defaults (CW: c = 1, 50 Adam steps, no binary search over c
    as in the paper; DeepFool: 50 steps, overshoot 0.02); Square gets 1,000 queries (its paper
    uses 10,000) for the CPU budget.
    Quick mode keeps every attack (so every row exists) with far fewer iterations."""
    steps = 10
    specs: list[AttackSpec] = []
    for eps in epsilons:
        specs += [
            AttackSpec("fgsm", eps),
            AttackSpec("pgd", eps, {"alpha": 0.01, "steps": 10 if quick else 40, "random_start": True}),
            AttackSpec("mifgsm", eps, {"alpha": eps / steps, "steps": steps, "decay": 1.0}),
            AttackSpec("bim", eps, {"alpha": eps / steps, "steps": steps}),
        ]
    specs += [
        AttackSpec("cw", None, {"c": 1.0, "kappa": 0.0, "steps": 20 if quick else 50, "lr": 0.01}),
        AttackSpec("deepfool", None, {"steps": 10 if quick else 50, "overshoot": 0.02}, batch_size=360),
        AttackSpec(
            "square",
            0.3,
            {
                "n_queries": 50 if quick else 1000,
                "n_restarts": 1,
                "p_init": 0.8,
                "loss": "margin",
                "resc_schedule": True,
                "seed": 0,
            },
            batch_size=512,
        ),
    ]
    return specs


def load_surrogate(path: Path):
    """The surrogate the attacks differentiate through: an ONNX classifier run as torch."""
    from guard.backends.onnx_torch import load_onnx_classifier

    return load_onnx_classifier(path)


def run_attack(spec: AttackSpec, model: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Adversarial examples for x (float32 in [0, 1]) against the surrogate; seeded."""
    torch.manual_seed(seed)
    attack = spec.build(model)
    out = []
    for start in tqdm(range(0, len(x), spec.batch_size), desc=f"attack {spec.key}", unit="batch", leave=False):
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + spec.batch_size], np.float32))
        yb = torch.from_numpy(np.array(y[start : start + spec.batch_size], np.int64))
        out.append(attack(xb, yb).detach().clamp(0.0, 1.0).numpy())
    return np.concatenate(out).astype(np.float32)


def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The surrogate's predicted classes."""
    with torch.no_grad():
        return model(torch.from_numpy(np.array(x, np.float32))).argmax(1).numpy()


def surrogate_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean())
