"""After each verdict on a camera's frame: whether the camera is in alert (guard.serving.cameras),
its metrics and its baseline's, and a warning when it enters alert."""

from __future__ import annotations

import logging

from guard.serving.logs import loggable
from guard.serving.runtime import ModelRuntime

# The data plane's logger: the per-request lines operators filter on (flagged, camera in alert).
log = logging.getLogger("guard.serving.dataplane")


def observe_camera(runtime: ModelRuntime, camera: str, flagged: bool) -> bool:
    """Whether the camera is in alert after this verdict."""
    alert, entered = runtime.cameras.observe(camera, flagged)
    settings = runtime.config.cameras
    runtime.metrics.camera(camera, flagged, settings.per_camera_metrics, entered, runtime.cameras.in_alert)
    if runtime.baselines is not None:
        baseline = runtime.baselines.camera(camera)
        if baseline is not None:
            runtime.metrics.baseline(
                camera,
                baseline.flag_rate(),
                baseline.drift(),
                runtime.baselines.warm,
                runtime.baselines.over_target,
                settings.per_camera_metrics,
            )
    if entered:
        log.warning(
            "camera in alert model=%s camera=%s: %d of its last %d frames flagged",
            runtime.config.name,
            loggable(camera),
            settings.alert_flags,
            settings.alert_window,
        )
    return alert
