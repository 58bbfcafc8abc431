"""White-box L-inf and L2 attacks on MobileNetV2 for guard_examples.camera_evaluation, in the guard's
preprocessing space: the 224x224 pixels the gateway feeds the model for the frame, [0, 1],
normalisation inside the attacked module (the guard normalises after its variants, so the
detectors see the same pixels the attack changed). torchattacks through guard's own attack specs
(guard.tools.evaluation.attacks), parameters fixed up front.

The frame is first resized exactly as the gateway resizes it under the served `[preprocess]`
(`served_view`): with `center-crop`, to its shorter side `resize_shorter` (8-bit, as the gateway
rounds it), and the attack changes only the centre crop the gateway cuts out of that; the
example sent is the whole resized frame with the attacked crop pasted in, which the gateway then
crops without resizing again. With `stretch` the view is the 224x224 frame itself.

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

from guard.api import attacks as atk
from guard.api import center_crop_geometry, decode_image, encode_jpeg, resize
from guard_examples import mobilenet_v2

log = logging.getLogger("guard_examples.camera_evaluation")

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


def served_view(rgb: np.ndarray, preprocess: dict) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """RGB uint8 -> (uint8 image to send, (top, left, height, width) of what the gateway feeds the
    model from it): the frame resized exactly as the gateway resizes it under `preprocess` (the
    served config's table), so the gateway only crops it (center-crop) or takes it whole (stretch)."""
    height, width = preprocess["height"], preprocess["width"]
    mode = preprocess.get("resize", "stretch")
    if mode == "center-crop":
        shorter = preprocess.get("resize_shorter") or max(height, width)
        new_h, new_w, top, left = center_crop_geometry(*rgb.shape[:2], shorter, height, width)
    elif mode == "stretch":
        new_h, new_w, top, left = height, width, 0, 0
    else:
        raise ValueError(f"resize {mode!r}: the classifier attacks take center-crop or stretch")
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    if (new_h, new_w) != rgb.shape[:2]:
        x = resize(x, new_h, new_w)
    view = (x[0].clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return view, (top, left, height, width)


def _crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, height, width = box
    return image[top : top + height, left : left + width]


def _paste(image: np.ndarray, crop: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, height, width = box
    out = image.copy()
    out[top : top + height, left : left + width] = crop
    return out


def attack_specs(quick: bool) -> list[atk.AttackSpec]:
    """Fixed up front: PGD (alpha 2/255, 10 steps, random start: the usual ImageNet setting),
    MI-FGSM (alpha eps/10, 10 steps, decay 1: the paper's), CW-L2 (torchattacks' defaults)."""
    steps = 1 if quick else 10
    return [
        atk.AttackSpec("pgd", EPS, {"alpha": 2 / 255, "steps": steps, "random_start": True}, batch_size=12),
        atk.AttackSpec("mifgsm", EPS, {"alpha": EPS / 10, "steps": steps, "decay": 1.0}, batch_size=12),
        atk.AttackSpec("cw", None, {"c": 1.0, "kappa": 0.0, "steps": 1 if quick else 50, "lr": 0.01}, batch_size=12),
    ]


@dataclass
class ClassifierAttack:
    spec: atk.AttackSpec
    jpegs: list[bytes]
    before: np.ndarray
    """White-box success on the float example (torch's top-1 changed)."""
    after_jpeg: np.ndarray
    """The same after 8-bit quantisation and JPEG, still on torch."""
    seconds: float


def attack_classifier(frames: list[np.ndarray], preprocess: dict, quick: bool, seed: int) -> tuple[list, list]:
    """(clean JPEGs at the attack's quality, one ClassifierAttack per spec), all on torch;
    `preprocess` is the served config's [preprocess] table."""
    net = Normalised(mobilenet_v2.load_mobilenet_v2()).eval()
    views = [served_view(rgb, preprocess) for rgb in frames]
    clean = np.stack([_crop(view, box) for view, box in views])
    x = (clean.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    labels = atk.predict(net, x)
    done = []
    for spec in attack_specs(quick):
        started = time.perf_counter()
        adv = atk.run_attack(spec, net, x, labels, seed=seed)
        pixels = (adv * 255).round().clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        jpegs = [encode_jpeg(_paste(view, p, box), ATTACK_QUALITY) for p, (view, box) in zip(pixels, views)]
        decoded = (
            np.stack([_crop(decode_image(j), box) for j, (_, box) in zip(jpegs, views)]).transpose(0, 3, 1, 2) / 255.0
        )
        done.append(
            ClassifierAttack(
                spec,
                jpegs,
                atk.predict(net, adv) != labels,
                atk.predict(net, decoded.astype(np.float32)) != labels,
                time.perf_counter() - started,
            )
        )
        log.info(
            "%s: white-box %.2f, after JPEG %.2f (torch), %.0f s",
            spec.key,
            done[-1].before.mean(),
            done[-1].after_jpeg.mean(),
            done[-1].seconds,
        )
    return [encode_jpeg(view, ATTACK_QUALITY) for view, _ in views], done
