"""Footage that stands for time: what the hours between two clips do to a camera's frames,
simulated on real frames.

The clips that install offline last seconds; a deployed camera runs for days, through dusk and
dawn, rain and the gain its sensor adds at night. Each condition below is applied over the evaluated
part of a clip as a ramp: `progress` runs from 0 on its first frame to 1 on its last, so the last
frame is the farthest from what the camera's warm-up (before it) saw.

| condition | at progress 1 |
| --- | --- |
| `dusk` / `dawn` | brightness x0.6 / x1.4 (clipped): the ±40% illumination ramp |
| `gain` | sensor gain x1.5 with Gaussian read noise of sd 8/255: a camera's automatic gain at night |
| `jpeg` | re-encoded at quality 40 (from the camera's 90): a bandwidth change |
| `pan` | the view slid sideways by 10% of its width (cropped and resized back): a slow pan |
| `haze` | 40% blended towards the frame's mean grey: weather-like contrast loss |
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from guard.tools.clean_data import encode_jpeg

Condition = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
"""(RGB uint8 frame [H, W, 3], progress in [0, 1], rng) -> RGB uint8 frame of the same size."""

CAMERA_QUALITY = 90
"""The JPEG quality the cameras in these evaluations send (and calibration frames were)."""
LOWEST_QUALITY = 40


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def brightness(factor_at_end: float) -> Condition:
    def apply(frame: np.ndarray, progress: float, rng: np.random.Generator) -> np.ndarray:
        return _to_uint8(frame.astype(np.float32) * (1.0 + (factor_at_end - 1.0) * progress))

    return apply


def gain(frame: np.ndarray, progress: float, rng: np.random.Generator) -> np.ndarray:
    noisy = frame.astype(np.float32) * (1.0 + 0.5 * progress)
    return _to_uint8(noisy + rng.normal(0.0, 8.0 * progress, frame.shape))


def pan(frame: np.ndarray, progress: float, rng: np.random.Generator) -> np.ndarray:
    h, w = frame.shape[:2]
    shift = int(round(0.1 * w * progress))
    if shift == 0:
        return frame
    view = frame[:, shift:] if shift < w else frame[:, -1:]
    return np.asarray(Image.fromarray(view).resize((w, h), Image.Resampling.BILINEAR))


def haze(frame: np.ndarray, progress: float, rng: np.random.Generator) -> np.ndarray:
    x = frame.astype(np.float32)
    return _to_uint8(x + 0.4 * progress * (x.mean() - x))


def unchanged(frame: np.ndarray, progress: float, rng: np.random.Generator) -> np.ndarray:
    return frame


CONDITIONS: dict[str, Condition] = {
    "clean": unchanged,
    "dusk": brightness(0.6),
    "dawn": brightness(1.4),
    "gain": gain,
    "jpeg": unchanged,  # the change is in the encoding: see quality()
    "pan": pan,
    "haze": haze,
}


def quality(name: str, progress: float) -> int:
    """The JPEG quality a frame is sent at under the condition."""
    if name == "jpeg":
        return int(round(CAMERA_QUALITY - (CAMERA_QUALITY - LOWEST_QUALITY) * progress))
    return CAMERA_QUALITY


def under(name: str, frames: list[np.ndarray], seed: int = 0) -> list[bytes]:
    """`frames` (in time order) as the camera sends them under condition `name`, ramped from the
    first frame to the last: JPEG bytes."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}: one of {', '.join(CONDITIONS)}")
    rng = np.random.default_rng(seed)
    last = max(len(frames) - 1, 1)
    return [
        encode_jpeg(CONDITIONS[name](frame, i / last, rng), quality(name, i / last)) for i, frame in enumerate(frames)
    ]
