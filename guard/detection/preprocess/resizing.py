"""How an image is brought to a model's height x width: the one copy of the rule, for the `images`
and `frames` preprocessors and for every recipe, attack and evaluation that must see the pixels the
gateway feeds a model.

Three modes (the `images` preprocessing's `resize`):
- "stretch": resized to height x width, whatever its aspect ratio.
- "letterbox": fitted inside height x width with its aspect kept, centred, the rest padded with
  `pad_value` (what YOLO-family detectors were trained on).
- "center-crop": the shorter side resized to `shorter` with the aspect kept, then the centre
  height x width cut out (torchvision's `Resize(S)` + `CenterCrop`, the evaluation transform
  ImageNet classifiers were trained for). Sizes and offsets follow torchvision's arithmetic (the
  longer side truncated, the offsets rounded), so the guard cuts the pixels torchvision does.

All three use `resize`: bilinear, half-pixel centres, antialiased when shrinking.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("stretch", "letterbox", "center-crop")


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float [N, C, h, w] -> [N, C, height, width]: bilinear, half-pixel centres, antialiased when
    shrinking (on either side).

    Antialiased because that is what weights trained through Pillow or torchvision saw (MobileNetV2's
    among them): Pillow's resize, and torchvision's Resize with antialias=True, average over the whole
    footprint of each output pixel when they shrink. Without it a camera frame shrunk to a detector's
    416 pixels aliases fine texture into patterns no training image had. Growing an image is plain
    bilinear (there antialiasing changes next to nothing). Decided here, once: every preprocessor,
    recipe, attack and evaluation that must see the gateway's pixels calls this function."""
    shrinking = height < x.shape[-2] or width < x.shape[-1]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def letterbox_geometry(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): the size an image keeps inside the target with its aspect ratio,
    and where it sits (centred)."""
    scale = min(target_h / height, target_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return new_h, new_w, (target_h - new_h) // 2, (target_w - new_w) // 2


def letterbox(x: torch.Tensor, height: int, width: int, pad_value: float) -> torch.Tensor:
    """float [N, C, h, w] in [0, 1] -> [N, C, height, width]: `resize`d to fit with its aspect kept,
    centred, padded with `pad_value` (clamped to [0, 1])."""
    new_h, new_w, top, left = letterbox_geometry(x.shape[-2], x.shape[-1], height, width)
    if (new_h, new_w) != tuple(x.shape[-2:]):
        x = resize(x, new_h, new_w)
    out = torch.full((*x.shape[:-2], height, width), pad_value, dtype=x.dtype, device=x.device)
    out[..., top : top + new_h, left : left + new_w] = x.clamp(0.0, 1.0)
    return out


def boxes_to_frame(xyxy: np.ndarray, height: int, width: int, target_h: int, target_w: int) -> np.ndarray:
    """Boxes [..., 4] (x1, y1, x2, y2) in the pixels of a height x width image letterboxed into
    target_h x target_w -> the same boxes in the image's own pixels (`letterbox`'s placement undone)."""
    new_h, new_w, top, left = letterbox_geometry(height, width, target_h, target_w)
    out = np.array(xyxy, dtype=np.float32, copy=True)
    out[..., [0, 2]] = (out[..., [0, 2]] - left) * (width / new_w)
    out[..., [1, 3]] = (out[..., [1, 3]] - top) * (height / new_h)
    return out


def center_crop_geometry(
    height: int, width: int, shorter: int, target_h: int, target_w: int
) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): the size an image takes with its shorter side resized to `shorter`
    and the aspect kept, and where the centred target_h x target_w crop starts in it. torchvision's
    arithmetic (transforms.v2.functional: the longer side truncated, the offsets rounded half to
    even), so both cut the same pixels."""
    if height <= width:
        new_h, new_w = shorter, int(shorter * width / height)
    else:
        new_h, new_w = int(shorter * height / width), shorter
    return new_h, new_w, int(round((new_h - target_h) / 2.0)), int(round((new_w - target_w) / 2.0))


def center_crop(x: torch.Tensor, shorter: int, height: int, width: int, eight_bit: bool = False) -> torch.Tensor:
    """float [N, C, h, w] in [0, 1] -> [N, C, height, width]: the shorter side resized to `shorter`,
    then the centre cut out (torchvision's Resize(shorter) + CenterCrop((height, width))). With
    `eight_bit` (x holds 8-bit pixels) the resized image is rounded back to 8-bit levels, as
    torchvision's Resize leaves a uint8 image and Pillow's resize any image."""
    new_h, new_w, top, left = center_crop_geometry(x.shape[-2], x.shape[-1], shorter, height, width)
    if (new_h, new_w) != tuple(x.shape[-2:]):
        x = resize(x, new_h, new_w)
        if eight_bit:
            x = x.mul(255.0).round_().div_(255.0)
    return x[..., top : top + height, left : left + width]


def fit(x: torch.Tensor, mode: str, height: int, width: int, pad_value: float = 0.5, shorter: int = 0) -> torch.Tensor:
    """8-bit pixels as float [N, C, h, w] in [0, 1] -> [N, C, height, width] in [0, 1] by `mode`
    (MODES). `shorter` (center-crop) defaults to max(height, width), the least cropping; the
    center-crop is rounded to 8-bit levels like the transform it reproduces (on 126 real frames and
    photos MobileNetV2's top-1 then matches torchvision's on 124, unrounded on 119: near-ties,
    examples/guard_examples/mobilenet_v2.py)."""
    if mode == "stretch":
        if tuple(x.shape[-2:]) != (height, width):
            x = resize(x, height, width)
        return x.clamp(0.0, 1.0)
    if mode == "center-crop":
        return center_crop(x, shorter or max(height, width), height, width, eight_bit=True).clamp(0.0, 1.0)
    if mode == "letterbox":
        return letterbox(x, height, width, pad_value)
    raise ValueError(f"resize: {', '.join(MODES)}, got {mode!r}")
