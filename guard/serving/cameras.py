"""Cameras: many video streams share one model, and a request says which camera it comes from with
the `camera_id` request parameter.

- Fair queueing: a model's batcher takes requests from every camera in turn, and one camera may
  hold at most `max_queued` places in the model's queue (guard.serving.batching), so a camera
  flooding at ten times its rate delays only itself.
- Order: over ModelStreamInfer, each camera's answers come back in the order its frames were
  sent (guard.serving.transport.streams).
- Smoothing: one flagged frame among many is noise more often than an attack; an attack on a
  camera lasts. Each camera keeps its last `alert_window` verdicts, and when `alert_flags` of them
  are flagged the camera is in alert: answers carry `guard_camera_alert = true` and
  guard_camera_alerts_total counts the transitions into alert.
- Baselines ([cameras.baseline], guard.detection.baselines): each camera's scores are judged
  against its own scene after a warm-up, adapting slowly within bounds; its clean-flag-rate
  estimate and drift are metrics.
- Metrics per camera (a `camera` label) are opt-in (`per_camera_metrics`): label values come from
  clients, and a gateway in front of thousands of cameras must not grow its series without bound.
  At most `max_cameras` cameras are tracked (least recently seen dropped first).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from guard.detection.baselines import BaselineSettings, Factory
from guard.protocol.errors import InvalidInput
from guard.protocol.limits import echo
from guard.protocol.settings import TableReader

CAMERA_ID = "camera_id"
ALERT = "guard_camera_alert"
MAX_ID_CHARS = 128


@dataclass(frozen=True)
class CameraSettings:
    alert_window: int = 10
    """How many of a camera's latest verdicts are kept."""
    alert_flags: int = 3
    """Flagged verdicts among them that put the camera in alert."""
    max_queued: int = 64
    """Most requests one camera may have in the model's queue."""
    per_camera_metrics: bool = False
    max_cameras: int = 4096
    baseline: BaselineSettings | None = None
    """Per-camera baselines ([cameras.baseline]); None: every camera is judged as calibrated."""
    factory: Factory | None = None
    """[cameras.baseline.factory]: each detector's clean [location, spread, reach], written by calibration."""


BASELINE_KEYS = (
    "warmup_frames",
    "adapt_rate",
    "max_drift_per_hour",
    "min_scale",
    "max_offset",
    "rate_window",
    "calibration_draws",
    "detectors",
    "factory",
)


def read_baseline(r: TableReader) -> tuple[BaselineSettings | None, Factory | None]:
    if not r.table:
        return None, None
    r.unknown(BASELINE_KEYS)
    d = BaselineSettings()
    settings = BaselineSettings(
        warmup=r.positive("warmup_frames", d.warmup),
        adapt_rate=r.positive_float("adapt_rate", d.adapt_rate),
        max_drift_per_hour=r.positive_float("max_drift_per_hour", d.max_drift_per_hour),
        min_scale=r.positive_float("min_scale", d.min_scale),
        max_offset=r.positive_float("max_offset", d.max_offset),
        rate_window=r.positive("rate_window", d.rate_window),
        calibration_draws=r.positive("calibration_draws", d.calibration_draws),
        detectors=_names(r, "detectors"),
    )
    if settings.adapt_rate > 1:
        raise r.fail("adapt_rate", "a share of the gap, in (0, 1]", settings.adapt_rate)
    factory = None
    if "factory" in r.table:
        f = r.sub("factory")
        for name, value in f.table.items():
            if not (
                isinstance(value, list)
                and len(value) in (2, 3)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                and all(v > 0 for v in value[1:])
            ):
                raise f.fail(
                    name,
                    "[location, spread, reach] of the detector's clean scores, spreads > 0 (run `guard calibrate`)",
                    value,
                )
        factory = Factory.from_table(f.table)
    return settings, factory


def _names(r: TableReader, key: str) -> tuple[str, ...] | None:
    value = r.get(key, list, None, "a list of detector names")
    if value is not None and not all(isinstance(v, str) for v in value):
        raise r.fail(key, "a list of detector names", value)
    return None if value is None else tuple(value)


def read_camera_settings(r: TableReader) -> CameraSettings:
    r.unknown(set(CameraSettings.__dataclass_fields__) - {"factory"})
    d = CameraSettings()
    baseline, factory = read_baseline(r.sub("baseline"))
    settings = CameraSettings(
        alert_window=r.positive("alert_window", d.alert_window),
        alert_flags=r.positive("alert_flags", d.alert_flags),
        max_queued=r.positive("max_queued", d.max_queued, allow_zero=True),
        per_camera_metrics=r.get("per_camera_metrics", bool, d.per_camera_metrics),
        max_cameras=r.positive("max_cameras", d.max_cameras),
        baseline=baseline,
        factory=factory,
    )
    if settings.alert_flags > settings.alert_window:
        raise r.fail("alert_flags", f"at most alert_window ({settings.alert_window})", settings.alert_flags)
    return settings


def camera_of(parameters: dict) -> str | None:
    """The request's camera_id, checked; None when it names no camera."""
    camera = parameters.get(CAMERA_ID)
    if camera is None:
        return None
    if not isinstance(camera, str) or not camera or len(camera) > MAX_ID_CHARS or not camera.isprintable():
        raise InvalidInput(
            f"parameter '{CAMERA_ID}': expected a printable string of 1 to {MAX_ID_CHARS} characters, "
            f"got {echo(repr(camera))}"
        )
    return camera


class CameraTracker:
    """Each camera's latest verdicts and whether it is in alert (k of the last n flagged)."""

    def __init__(self, settings: CameraSettings, forget: Callable[[str], None] | None = None):
        """forget: called with a camera no longer tracked (its metric series go with it)."""
        self.settings = settings
        self._forget = forget
        self._windows: collections.OrderedDict[str, collections.deque[bool]] = collections.OrderedDict()
        self._alert: dict[str, bool] = {}
        self.in_alert = 0
        """Cameras in alert now."""

    def observe(self, camera: str, flagged: bool) -> tuple[bool, bool]:
        """(in alert now, just entered alert) after this verdict."""
        window = self._windows.get(camera)
        if window is None:
            window = self._windows[camera] = collections.deque(maxlen=self.settings.alert_window)
            if len(self._windows) > self.settings.max_cameras:
                gone, _ = self._windows.popitem(last=False)
                self.in_alert -= self._alert.pop(gone, False)
                if self._forget is not None:
                    self._forget(gone)
        else:
            self._windows.move_to_end(camera)
        window.append(flagged)
        alert = sum(window) >= self.settings.alert_flags
        was = self._alert.get(camera, False)
        self._alert[camera] = alert
        self.in_alert += alert - was
        return alert, alert and not was
