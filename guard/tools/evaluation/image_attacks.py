"""Attacks on image models: white-box on the served model's own ONNX run as torch (no surrogate:
the attacker holds the model the gateway serves, the strongest non-adaptive case), each judged by
a success rule (rules.py) that also gives the loss it minimises.

    [[attacks]]
    name = "pgd"                 # REGISTRY below
    rule = "hide"                # rules.REGISTRY: hide | appear | move | flip
    class = 0                    # optional: the class hidden or made to appear (default 0, COCO's person)
    iou = 0.5                    # optional: the IoU at which a box counts as found again
    eps = [0.0157, 0.0314]       # one L-inf budget or several (a row each), at least 1/255
    params = { steps = 20, alpha = 0.004, random_start = false }   # optional

`pgd` is guard's one L-inf PGD walk (pgd.linf_pgd) on 8-bit frames: every iterate lies on the
8-bit grid within the ball, so the frame that is sent (lossless PNG) is exactly the one whose loss
was kept (each row's best iterate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from guard.detection.detectors.base import CLASSIFICATION, DETECTION
from guard.tools.evaluation.image_models import LEVELS
from guard.tools.evaluation.pgd import linf_pgd
from guard.tools.evaluation.rules import REGISTRY as RULES
from guard.tools.evaluation.rules import Rule

EPSILONS = (4 / 255, 8 / 255, 16 / 255)
"""The default budgets for an image model the plan names no attack for."""
DEFAULT_RULE = {DETECTION: "hide", CLASSIFICATION: "flip"}


@dataclass(frozen=True)
class RuleAttack:
    """One attack on the image models of one output kind, at one budget."""

    name: str
    rule: str
    eps: float
    params: dict[str, Any] = field(default_factory=dict)
    target_class: int = 0
    iou: float = 0.5
    batch_size: int = 16

    @property
    def label(self) -> str:
        """The report's attack column: the rule, then the attack."""
        return f"{self.rule}_{self.name}"

    @property
    def key(self) -> str:
        return f"{self.label}_eps{self.eps:g}"

    @property
    def output_kind(self) -> str:
        return RULES[self.rule].output_kind

    def build_rule(self, boxes) -> Rule:
        return RULES[self.rule](boxes, self.target_class, self.iou)


def rule_pgd(
    model: torch.nn.Module,
    rule: Rule,
    x: torch.Tensor,
    eps: float,
    seed: int,
    steps: int = 20,
    alpha: float | None = None,
    random_start: bool = False,
) -> torch.Tensor:
    """PGD minimising the rule's loss against the model's clean answer; alpha defaults to eps / 4
    and is at least one level (a smaller step would be rounded away on the 8-bit grid)."""
    step = max(alpha if alpha is not None else eps / 4, 1.0 / LEVELS)
    with torch.no_grad():
        clean = model(x)
    gen = torch.Generator().manual_seed(seed)
    return linf_pgd(
        lambda adv: rule.loss(model(adv), clean),
        x,
        eps,
        steps,
        step,
        gen,
        random_start=random_start,
        keep_best=True,
        levels=LEVELS,
    )


ImageAttack = Callable[..., torch.Tensor]
REGISTRY: dict[str, ImageAttack] = {"pgd": rule_pgd}
"""The attacks an image plan's [[attacks]] may name (with a `rule`)."""
PARAMS = {"steps": int, "alpha": float, "random_start": bool}
"""rule_pgd's keyword arguments a plan may set in `params`."""


def run_rule_attack(spec: RuleAttack, model: torch.nn.Module, rule: Rule, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Attacked copies of x (float [N, 3, H, W] on the 8-bit grid), in batches."""
    attack = REGISTRY[spec.name]
    out = []
    for start in tqdm(range(0, len(x), spec.batch_size), desc=f"attack {spec.key}", unit="batch", leave=False):
        out.append(attack(model, rule, x[start : start + spec.batch_size], spec.eps, seed, **spec.params))
    return torch.cat(out) if out else x.clone()


def white_box_asr(model: torch.nn.Module, rule: Rule, x: torch.Tensor, adv: torch.Tensor) -> float | None:
    """The rule's success rate on the torch model itself, for comparison with the served one."""
    with torch.no_grad():
        eligible, successful = rule.judge(model(x).numpy(), model(adv).numpy())
    return None if not eligible.any() else float(successful.sum() / eligible.sum())


def default_suite(output_kind: str, quick: bool = False) -> list[RuleAttack]:
    """For an image model the plan names no attack for: PGD with its kind's default rule at
    4, 8 and 16 levels of 255 (20 steps; 5 in quick mode)."""
    steps = 5 if quick else 20
    return [RuleAttack("pgd", DEFAULT_RULE[output_kind], eps, {"steps": steps}) for eps in EPSILONS]
