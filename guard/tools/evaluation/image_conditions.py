"""Clean frames under simulated conditions (guard.tools.evaluation.conditions), through the live
gateway: what a camera's later hours do to the clean flag rate at the served thresholds.

    [data]
    test = ["frames/lobby", "frames/street"]
    cameras = true
    conditions = ["dusk", "gain", "jpeg"]     # optional; any of conditions.CONDITIONS

For each condition, every test source is sent again as a camera of its own (`<camera>~<condition>`):
its warm-up frames as they are (the camera's baseline warms up on them, as before the change), then
its judged frames with the condition ramped from the first judged frame (progress 0) to its last
(progress 1). The condition changes the source's frames at their own size, before the model's
resize, as it happens in front of a camera; `jpeg` re-encodes them at the ramp's quality and sends
what the decoder gives back. Each condition's row counts the judged frames the gateway flagged, with
the one-sided 95% upper bound, overall and per camera.

A ramp stands for hours, and a camera's baseline may follow its scene only so far per hour: where
this process started the gateway, each camera's judged frames span `[data] ramp_hours` on its
baseline clock (guard.tools.evaluation.baseline_clock). A --connect gateway's clock is out of
reach; its rows say `ramp_hours = 0` (the wall clock: a ramp reads as a sudden change).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from guard.detection.baselines import Baselines
from guard.tools.clean_data import decode_image, encode_jpeg
from guard.tools.evaluation.baseline_clock import simulated_hours
from guard.tools.evaluation.client import GatewayClient
from guard.tools.evaluation.conditions import CAMERA_QUALITY, CONDITIONS, quality
from guard.tools.evaluation.frame_data import FrameSplit, judged_rows
from guard.tools.evaluation.image_models import ImageModel
from guard.tools.evaluation.reference import flag_rate, served_flags

SEPARATOR = "~"
"""Between a camera's name and the condition in the camera ids a condition's frames are sent with."""


def judged_mask(cameras: Sequence[str], warmup: int) -> np.ndarray:
    """[N] whether each frame is judged (frame_data.judged_rows as a mask)."""
    mask = np.zeros(len(cameras), dtype=bool)
    mask[judged_rows(cameras, warmup)] = True
    return mask


def under_condition(
    frames: Sequence[np.ndarray], cameras: Sequence[str], warmup: int, name: str, seed: int
) -> list[np.ndarray]:
    """The frames as each camera sends them under condition `name`: warm-up frames unchanged, each
    camera's judged frames ramped from progress 0 to 1 (one noise stream per camera, from `seed`)."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}: one of {', '.join(CONDITIONS)}")
    judged = judged_mask(cameras, warmup)
    out = list(frames)
    for k, camera in enumerate(dict.fromkeys(cameras)):
        rows = [i for i, c in enumerate(cameras) if c == camera and judged[i]]
        rng = np.random.default_rng([seed, k])
        last = max(len(rows) - 1, 1)
        for j, i in enumerate(rows):
            progress = j / last
            changed = CONDITIONS[name](frames[i], progress, rng)
            level = quality(name, progress)
            # Only the encoding condition goes through the codec: the others change pixels, and a
            # round trip at the camera's own quality would add a second, unmeasured change.
            out[i] = decode_image(encode_jpeg(changed, level)) if level != CAMERA_QUALITY else changed
    return out


def condition_rows(
    client: GatewayClient,
    name: str,
    image: ImageModel,
    test: FrameSplit,
    conditions: Sequence[str],
    seed: int,
    baselines: Baselines | None = None,
) -> dict[str, dict]:
    """Per condition: the judged frames' served flag rate, overall and per camera. `baselines`: the
    model's, where this process serves it (its clock is simulated while the condition runs)."""
    warmup = image.warmup
    cameras = list(test.cameras)
    judged = judged_mask(cameras, warmup)
    hours = test.ramp_hours if baselines is not None and warmup else 0.0
    rows = {}
    for condition in conditions:
        frames = under_condition(test.frames, cameras, warmup, condition, seed)
        ids = [f"{camera}{SEPARATOR}{condition}" for camera in cameras]
        spans = collections.Counter(ids[i] for i in np.flatnonzero(judged))
        with simulated_hours(baselines, spans, hours):
            served = client.infer_encoded(
                name,
                image.encode(image.views(frames)),
                desc=f"{name} clean test under {condition}",
                cameras=ids if warmup else None,
            )
        flags = served_flags(served)
        rows[condition] = {
            "ramp_hours": hours,
            **flag_rate(flags[judged]),
            "cameras": {
                camera: flag_rate(flags[judged & (np.array(cameras) == camera)]) for camera in dict.fromkeys(cameras)
            },
        }
    return rows
