"""Seeded training for the digits classifiers, shared by every digits recipe of guard_examples.

One loop covers the standard model, regularised variants (L2 weight decay, L1 penalty,
dropout), adversarial training and fine-tuning of pruned or poisoned models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from guard.api import untargeted_pgd
from guard_examples.digits_net import DigitsNet
from guard_examples.train_utils import random_shift, seed_everything, single_thread


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 100
    """Chosen by mean calibration accuracy over seeds 0-4 (60/80/100/120 tried); test untouched."""
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    """L2 penalty (Adam's weight decay)."""
    l1: float = 0.0
    """L1 penalty on all weights, added to the loss as l1 * sum |w|."""
    dropout: float = 0.0
    """Dropout before the last layer."""
    max_shift: int = 1
    """Augmentation: random integer translations of up to this many pixels."""
    adv_eps: float = 0.0
    """PGD adversarial training (ICLR 2018) at this L-inf radius; 0 turns it off."""
    adv_steps: int = 7
    adv_step_size: float = 0.0
    """PGD step size; 0 means 2.5 * eps / steps (the PGD paper's rule)."""
    adv_lambda: float | None = None
    """None: train on the adversarial loss alone; else clean loss + adv_lambda * adversarial loss."""

    def describe(self) -> dict:
        return asdict(self)


def fit(
    x: np.ndarray,
    y: np.ndarray,
    options: TrainOptions,
    model: torch.nn.Module | None = None,
    progress: bool = True,
    desc: str = "training",
) -> torch.nn.Module:
    """Train `model` (a new DigitsNet if None) on (x, y); bit-reproducible for a given seed and CPU."""
    seed_everything(options.seed)
    model = model if model is not None else DigitsNet(dropout=options.dropout)
    xt, yt = torch.from_numpy(np.array(x, dtype=np.float32)), torch.from_numpy(np.array(y, dtype=np.int64))
    gen = torch.Generator().manual_seed(options.seed)  # shuffling, augmentation and PGD starts
    opt = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    step = options.adv_step_size or 2.5 * options.adv_eps / max(options.adv_steps, 1)
    with single_thread():
        for _ in tqdm(range(options.epochs), desc=desc, disable=not progress):
            for batch in torch.randperm(len(xt), generator=gen).split(options.batch_size):
                inputs, labels = random_shift(xt[batch], gen, options.max_shift), yt[batch]
                if options.adv_eps > 0:
                    model.eval()  # batch statistics and dropout must not see the attack
                    adversarial = untargeted_pgd(model, inputs, labels, options.adv_eps, options.adv_steps, step, gen)
                    model.train()
                    loss = F.cross_entropy(model(adversarial), labels)
                    if options.adv_lambda is not None:
                        loss = F.cross_entropy(model(inputs), labels) + options.adv_lambda * loss
                else:
                    model.train()
                    loss = F.cross_entropy(model(inputs), labels)
                if options.l1:
                    loss = loss + options.l1 * sum(p.abs().sum() for n, p in model.named_parameters() if "weight" in n)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval()
