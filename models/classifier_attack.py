"""White-box L-inf and L2 attacks on MobileNetV2 for models.camera_evaluation, in the guard's
preprocessing space: the frame resized to 224x224 exactly as the gateway resizes it, [0, 1]
pixels, normalisation inside the attacked module (the guard normalises after its variants, so the
detectors see the same pixels the attack changed). torchattacks through guard's own attack specs
(guard.tools.evaluation.attacks), parameters fixed up front.

Each example is then quantised to 8 bits and encoded as JPEG (quality 95) as a client would send
it; the white-box success before encoding and torch's success on the decoded JPEG are kept, so the
report can say how much the encoding weakens each attack before the gateway judges it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from guard.detection.preprocess.images import resize
from guard.tools.evaluation import attacks as atk
from models import footage, mobilenet_v2

log = logging.getLogger("models.camera_evaluation")

EPS = 8 / 255
ATTACK_QUALITY = 95


class Normalised(torch.nn.Module):
    """MobileNetV2 on [0, 1] pixels: the guard normalises after its variants, so the attack does too."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mobilenet_v2.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(mobilenet_v2.STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def stretched(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 -> uint8 at the classifier's size, resized exactly as the gateway resizes."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    x = resize(x, *size)[0].clamp(0.0, 1.0)
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def attack_specs(quick: bool) -> list[atk.AttackSpec]:
    """Fixed up front: PGD (alpha 2/255, 10 steps, random start: the usual ImageNet setting),
    MI-FGSM (alpha eps/10, 10 steps, decay 1: the paper's), CW-L2 (torchattacks' defaults)."""
    steps = 1 if quick else 10
    return [atk.AttackSpec("pgd", EPS, {"alpha": 2 / 255, "steps": steps, "random_start": True}, batch_size=12),
            atk.AttackSpec("mifgsm", EPS, {"alpha": EPS / 10, "steps": steps, "decay": 1.0}, batch_size=12),
            atk.AttackSpec("cw", None, {"c": 1.0, "kappa": 0.0, "steps": 1 if quick else 50, "lr": 0.01},
                           batch_size=12)]


@dataclass
class ClassifierAttack:
    spec: atk.AttackSpec
    jpegs: list[bytes]
    before: np.ndarray
    """White-box success on the float example (torch's top-1 changed)."""
    after_jpeg: np.ndarray
    """The same after 8-bit quantisation and JPEG, still on torch."""
    seconds: float


def attack_classifier(frames: list[np.ndarray], size: tuple[int, int], quick: bool, seed: int) -> tuple[list, list]:
    """(clean JPEGs at the attack's quality, one ClassifierAttack per spec), all on torch."""
    net = Normalised(mobilenet_v2.load_mobilenet_v2()).eval()
    clean = np.stack([stretched(rgb, size) for rgb in frames])
    x = (clean.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    labels = atk.predict(net, x)
    done = []
    for spec in attack_specs(quick):
        started = time.perf_counter()
        adv = atk.run_attack(spec, net, x, labels, seed=seed)
        pixels = (adv * 255).round().clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        jpegs = [footage.encode_jpeg(p, ATTACK_QUALITY) for p in pixels]
        decoded = np.stack([footage.decode_jpeg(j) for j in jpegs]).transpose(0, 3, 1, 2) / 255.0
        done.append(ClassifierAttack(spec, jpegs, atk.predict(net, adv) != labels,
                                     atk.predict(net, decoded.astype(np.float32)) != labels,
                                     time.perf_counter() - started))
        log.info("%s: white-box %.2f, after JPEG %.2f (torch), %.0f s", spec.key, done[-1].before.mean(),
                 done[-1].after_jpeg.mean(), done[-1].seconds)
    return [footage.encode_jpeg(c, ATTACK_QUALITY) for c in clean], done
