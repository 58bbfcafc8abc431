"""Simulated hours for per-camera baselines, while an evaluation sends a camera's frames.

A simulated condition (guard.tools.evaluation.conditions) stands for hours: a dusk, a night's
sensor gain. Its frames reach the gateway in seconds, though, and a camera's baseline may follow
its scene by at most `max_drift_per_hour` of its spread per hour of the baselines' clock
(guard.detection.baselines). On the wall clock a ramp therefore reads as a sudden change, which the
baseline is built not to follow. While `simulated_hours` is active, each listed camera's frames
carry a clock of their own: its k-th frame is observed at start + k x hours / judged[camera], so
that its judged frames span `hours`, and its baseline can follow the ramp exactly as far as the
hourly bound allows, no further (the same bound an attacker who owns the camera meets).

Only an evaluation that starts the gateway in its own process can do this (guard evaluate without
--connect, guard_examples.camera_baselines): it replaces the model's Baselines clock and observe
for the duration. Afterwards the wall clock is behind the cameras' simulated time, which a
baseline reads as no time passing.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping

from guard.detection.baselines import Baselines, CameraBaseline

BaselinesOf = Callable[[str], Baselines | None]
"""A model's per-camera baselines in the gateway this process started (None: none, or out of reach)."""


@contextlib.contextmanager
def simulated_hours(baselines: Baselines | None, judged: Mapping[str, int], hours: float) -> Iterator[None]:
    """judged: camera -> its frames to be judged (its warm-up comes before them, on the same
    per-frame pace). Cameras not listed keep the wall clock; no baselines (none, or out of reach)
    or hours <= 0 change nothing."""
    if baselines is None or hours <= 0:
        yield
        return
    start = baselines.clock()
    seen: collections.Counter[str] = collections.Counter()
    local, lock = threading.local(), threading.Lock()  # batches run on several worker threads
    wall, observe = baselines.clock, baselines.observe

    def simulated_observe(camera: str, scores: dict[str, float], flagged: bool) -> CameraBaseline:
        with lock:
            seen[camera] += 1
            frames = judged.get(camera)
            local.now = None if not frames else start + seen[camera] * hours * 3600.0 / frames
        return observe(camera, scores, flagged)

    def clock() -> float:
        now = getattr(local, "now", None)
        return wall() if now is None else float(now)

    baselines.clock = clock
    baselines.observe = simulated_observe  # type: ignore[method-assign]
    try:
        yield
    finally:
        baselines.clock = wall
        del baselines.observe  # the class's method again
