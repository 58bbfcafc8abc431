"""Per-camera baselines: a camera's scores judged against its own scene, not the calibration's.

Feature-space detectors measure how far a frame is from the clean frames they were fitted on, and
a camera pointed at another street, or the same street at dusk, is far from them without any
attack (docs/camera-evaluation.md: every frame of an unseen scene flagged). What an attack adds is
a jump away from the camera's own normal, so each camera's scores are re-expressed relative to it:

    s' = loc_F + (s - loc_c) * scale_F / scale_c

where loc_F is the factory's median of each detector's clean scores (every calibration camera
pooled, frozen at calibration), scale_F the median of the calibration cameras' own robust spreads,
and (loc_c, scale_c) the camera's own,
from its first `warmup` frames. The thresholds are fitted on scores mapped this way (calibration
runs the same warm-up on each of its cameras, `simulate`), so they hold for a camera after its
warm-up; before it, and for requests without a `camera_id`, scores are judged as they are.

Bounds, so that a camera's baseline follows slow change (light, weather) but an attacker who owns
the camera cannot walk it anywhere:
- scale_c is at least `min_scale` x scale_F and never changes after the warm-up (a wider spread
  would loosen every threshold at once);
- loc_c moves only on frames judged clean, by `adapt_rate` of the gap per frame, and by at most
  `max_drift_per_hour` x scale_c in any hour (a token bucket on the clock, so the frame rate does
  not matter) plus one quarter of that as the bucket's depth;
- loc_c stays within `max_offset` spreads of loc_F, counted in the spread of every calibration
  camera's scores pooled (how far the calibration scenes lie from each other), a ceiling set at
  calibration: a scene (or a poisoned warm-up) beyond it is judged from the ceiling, so it shows
  as flags, not as silence.
The warm-up itself is trust on first use: its frames are taken as the camera's normal.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from guard.detection.bounds import lower_bound

# Median absolute deviation -> standard deviation for a normal distribution.
MAD_TO_SD = 1.4826
MEAN_AD_TO_SD = 1.2533
# The bucket holds this many hours of drift: a camera may catch up on a quick change (a cloud)
# without an hour's wait, and an attacker gains at most this much beyond the hourly rate.
BUCKET_HOURS = 0.25
# Floor of any spread, in score units: a detector whose clean scores are all equal has no scale.
MIN_SPREAD = 1e-9
# A warm-up whose scores spread less than this share of the factory's spread showed nothing.
SHOWS_NOTHING = 0.01


@dataclass(frozen=True)
class BaselineSettings:
    warmup: int = 50
    """A camera's first frames, taken as its normal (its baseline's location and spread)."""
    adapt_rate: float = 0.02
    """Share of the gap between a clean frame's score and the baseline the location moves by."""
    max_drift_per_hour: float = 0.5
    """Most the location moves in an hour, in units of the camera's spread. Bounded well below the
    margin by which the attacks it guards against stand out: after an hour of an owner pulling a
    camera's baseline up as far as 0.5 allows, 27 of 29 PGD examples at 8/255 on MobileNetV2 were
    still detected (`python -m guard_examples.camera_baselines`; docs/camera-evaluation.md)."""
    min_scale: float = 1.0
    """A camera's spread is at least this share of the factory's. A warm-up of a few seconds shows
    how a scene jitters, not how it varies over hours (a still scene shows almost nothing), so by
    default a camera's spread is never taken below the factory's: what a camera's baseline corrects
    is mainly where its scores sit."""
    max_offset: float = 20.0
    """A camera's location stays within this many factory spreads of the factory's."""
    rate_window: int = 500
    """Frames over which a camera's clean-flag-rate estimate is counted."""
    calibration_draws: int = 8
    """Warm-up windows per calibration camera (guard.detection.baselines.simulate)."""
    detectors: tuple[str, ...] | None = None
    """The detectors judged per camera; None: every detector. On real footage every one of them
    depends on the scene, not only the feature-space ones: the confidence margin on what the scene
    shows, the squeezers on its texture (docs/camera-evaluation.md, per-camera baselines)."""

    def judged(self, names: list[str]) -> list[str]:
        """Of the model's detectors `names`, those judged per camera."""
        return [n for n in names if self.detectors is None or n in self.detectors]


@dataclass(frozen=True)
class Factory:
    """Each detector's clean location and spread over every calibration camera, frozen."""

    location: dict[str, float]
    scale: dict[str, float]
    """A camera's own spread (the median over calibration cameras): what baselines map onto."""
    reach: dict[str, float] | None = None
    """The spread over every calibration row, scenes pooled (the ceiling's unit); `scale` if None."""

    @classmethod
    def fit(cls, scores: dict[str, np.ndarray], cameras: np.ndarray | None = None) -> Factory:
        """Location: the median over every row. Spread: with `cameras`, the median of each
        camera's own spread (cameras with more than one row): how much one camera's scores vary,
        which is what a camera's baseline is measured against; pooled over cameras, the spread
        would also count how far the scenes are from each other, and loosen every threshold."""
        location, scale, reach = {}, {}, {}
        cameras = None if cameras is None else np.asarray(cameras)
        for name, values in scores.items():
            values = np.asarray(values, np.float64)
            location[name], scale[name] = robust(values)
            reach[name] = scale[name]
            if cameras is not None:
                own = [
                    robust(values[cameras == c])[1] for c in dict.fromkeys(cameras.tolist()) if (cameras == c).sum() > 1
                ]
                if own:
                    scale[name] = float(np.median(own))
        return cls(location, scale, reach)

    def unit(self, name: str) -> float:
        return (self.reach or self.scale)[name]

    def as_table(self) -> dict[str, list[float]]:
        return {name: [self.location[name], self.scale[name], self.unit(name)] for name in self.location}

    @classmethod
    def from_table(cls, table: dict[str, list[float]]) -> Factory:
        """[location, spread] or [location, spread, reach] per detector."""
        return cls(
            {k: float(v[0]) for k, v in table.items()},
            {k: float(v[1]) for k, v in table.items()},
            {k: float(v[-1]) for k, v in table.items()},
        )


def robust(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based spread (as a normal's standard deviation); robust to a few odd frames.
    Scores that are mostly one value (a detector that scores most clean frames 0) have no MAD:
    their mean absolute deviation stands in (as a normal's standard deviation too)."""
    location = float(np.median(values))
    deviations = np.abs(values - location)
    spread = MAD_TO_SD * float(np.median(deviations))
    if spread <= MIN_SPREAD:
        spread = MEAN_AD_TO_SD * float(deviations.mean())
    return location, max(spread, MIN_SPREAD)


@dataclass
class CameraBaseline:
    settings: BaselineSettings
    factory: Factory
    warming: list[dict[str, float]] = field(default_factory=list)
    warm: bool = False
    """Whether the warm-up is over; until then location, start, scale and budget are empty."""
    location: dict[str, float] = field(default_factory=dict)
    start: dict[str, float] = field(default_factory=dict)
    """The location the warm-up gave (drift is measured from it)."""
    scale: dict[str, float] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)
    updated: float = 0.0
    recent: collections.deque[bool] = field(default_factory=collections.deque)
    flagged: int = 0

    def ceiling(self, name: str) -> tuple[float, float]:
        f, s = self.factory.location[name], self.factory.unit(name)
        return f - self.settings.max_offset * s, f + self.settings.max_offset * s

    def _settle(self, now: float) -> None:
        location, scale = {}, {}
        for name in self.factory.location:
            values = np.array([row[name] for row in self.warming])
            loc, spread = robust(values)
            if spread < SHOWS_NOTHING * self.factory.scale[name]:
                # The warm-up shows nothing of this detector (a detector of boxes scores an empty
                # street 0 on every frame): where its scores sit once something appears is unknown,
                # so the camera is judged on it as calibrated (the mapping is the identity).
                location[name], scale[name] = self.factory.location[name], self.factory.scale[name]
                continue
            low, high = self.ceiling(name)
            location[name] = min(max(loc, low), high)
            scale[name] = max(spread, self.settings.min_scale * self.factory.scale[name])
        self.location, self.start, self.scale, self.warm = location, dict(location), scale, True
        self.budget = {name: self._depth(name) for name in location}
        self.updated, self.warming = now, []

    def _depth(self, name: str) -> float:
        return BUCKET_HOURS * self.settings.max_drift_per_hour * self.scale[name]

    def observe(self, scores: dict[str, float], flagged: bool, now: float) -> None:
        """One judged frame: warm-up, or a bounded step towards a clean frame's scores."""
        self.recent.append(flagged)
        self.flagged += flagged
        if len(self.recent) > self.settings.rate_window:
            self.flagged -= self.recent.popleft()
        if not self.warm:
            self.warming.append({name: scores[name] for name in self.factory.location})
            if len(self.warming) >= self.settings.warmup:
                self._settle(now)
            return
        hours = max(now - self.updated, 0.0) / 3600.0
        self.updated = now
        for name, loc in self.location.items():
            rate = self.settings.max_drift_per_hour * self.scale[name]
            budget = min(self.budget[name] + rate * hours, self._depth(name))
            if not flagged:
                step = float(np.clip(self.settings.adapt_rate * (scores[name] - loc), -budget, budget))
                low, high = self.ceiling(name)
                moved = min(max(loc + step, low), high)
                budget -= abs(moved - loc)
                self.location[name] = moved
            self.budget[name] = budget

    def normalise(self, name: str, values: np.ndarray) -> np.ndarray:
        return self.factory.location[name] + (values - self.location[name]) * (
            self.factory.scale[name] / self.scale[name]
        )

    def drift(self) -> float:
        """How far the location moved since the warm-up, in the camera's spreads (largest detector)."""
        if not self.warm:
            return 0.0
        return max(abs(self.location[n] - self.start[n]) / self.scale[n] for n in self.location)

    def flag_rate(self) -> float:
        return self.flagged / len(self.recent) if self.recent else 0.0


class Baselines:
    """Every camera's baseline for one model, bounded in number (least recently seen dropped)."""

    def __init__(
        self,
        settings: BaselineSettings,
        factory: Factory,
        max_cameras: int = 4096,
        target: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ):
        """target: the clean flag rate a camera is expected to keep (the model's target_fpr)."""
        self.settings = settings
        self.factory = factory
        self.max_cameras = max_cameras
        self.target = target
        self.clock = clock
        self._cameras: collections.OrderedDict[str, CameraBaseline] = collections.OrderedDict()
        self._over: set[str] = set()
        self.warm = 0
        """Cameras past their warm-up."""
        # Batches of one model run on several worker threads (batching.instances).
        self._lock = threading.Lock()

    @property
    def over_target(self) -> int:
        """Cameras whose clean-flag-rate estimate is significantly above the target: the lower end of
        its one-sided 95% interval is above it (a camera that drifted, or is under attack)."""
        return len(self._over)

    def camera(self, camera: str) -> CameraBaseline | None:
        with self._lock:
            return self._cameras.get(camera)

    def normalise(
        self, cameras: list[str | None], rows: list[slice], scores: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The scores the decision judges: rows of warmed-up cameras re-expressed against their
        baselines; every other row as it is. Detectors without a factory entry are left alone."""
        out = {name: np.array(values, np.float64) for name, values in scores.items()}
        with self._lock:
            for camera, span in zip(cameras, rows):
                baseline = self._cameras.get(camera) if camera is not None else None
                if baseline is None or not baseline.warm:
                    continue
                for name in out:
                    if name in baseline.location:
                        out[name][span] = baseline.normalise(name, out[name][span])
        return out

    def observe(self, camera: str, scores: dict[str, float], flagged: bool) -> CameraBaseline:
        """A camera's judged frame (raw scores, the worst row of the request)."""
        with self._lock:
            baseline = self._cameras.get(camera)
            if baseline is None:
                baseline = self._cameras[camera] = CameraBaseline(self.settings, self.factory)
                if len(self._cameras) > self.max_cameras:
                    gone, old = self._cameras.popitem(last=False)
                    self.warm -= old.warm
                    self._over.discard(gone)
            else:
                self._cameras.move_to_end(camera)
            was_warm = baseline.warm
            baseline.observe(scores, flagged, self.clock())
            self.warm += baseline.warm and not was_warm
            if baseline.warm and _lower_bound(baseline.flagged, len(baseline.recent)) > self.target:
                self._over.add(camera)
            else:
                self._over.discard(camera)
            return baseline


@functools.lru_cache(maxsize=65536)
def _lower_bound(flagged: int, n: int) -> float:
    # Cached: per frame, and (flagged, n) takes few values for a window of a few hundred frames.
    return lower_bound(flagged, n)


def simulate(
    scores: dict[str, np.ndarray],
    cameras: np.ndarray,
    settings: BaselineSettings,
    factory: Factory | None = None,
    draws: int = 1,
) -> tuple[dict[str, np.ndarray], np.ndarray, Factory]:
    """What calibration fits thresholds on: each camera's rows mapped against the baseline of a
    warm-up window of `warmup` of its rows, as the server maps them. Returns the mapped scores of
    the judged rows, their indices, and the factory (fitted on every row of `scores` when not
    given: pass only the per-camera detectors' scores to fit it; the detectors it lacks are passed
    through unmapped). Cameras with no more rows than the warm-up add only to the factory.

    draws = 1: the warm-up is the camera's first rows, the rest are judged (what a deployment
    does, and how held-out frames are judged). draws = D > 1: D warm-up windows spread over the
    camera's rows, each judging a disjoint 1/D of the rows outside it. A threshold fitted on one
    warm-up per camera would take that warm-up's luck (a location or spread a little off) as the
    norm; D windows show it how much a warm-up of this length varies, while every row is still
    judged once, so the sample count the bounds use is not inflated."""
    names = [n for n in scores if factory is None or n in factory.location]
    cameras = np.asarray(cameras)
    factory = factory or Factory.fit(scores, cameras)
    kept: list[np.ndarray] = []
    mapped: dict[str, list[np.ndarray]] = {name: [] for name in scores}
    for camera in dict.fromkeys(cameras.tolist()):
        rows = np.flatnonzero(cameras == camera)
        if len(rows) <= settings.warmup:
            continue
        n = len(rows)
        count = max(1, min(draws, n - settings.warmup))
        starts = np.linspace(0, n - settings.warmup, count).round().astype(int)
        for k, start in enumerate(starts):
            window = rows[start : start + settings.warmup]
            outside = np.concatenate([rows[:start], rows[start + settings.warmup :]])
            judged = outside if count == 1 else outside[np.arange(len(outside)) % count == k]
            baseline = CameraBaseline(settings, factory)
            for row in window:
                baseline.observe({name: float(scores[name][row]) for name in names}, False, 0.0)
            kept.append(judged)
            for name, values in scores.items():
                values = np.asarray(values, np.float64)[judged]
                mapped[name].append(baseline.normalise(name, values) if name in factory.location else values)
    if not kept:
        raise ValueError(
            f"no camera has more than {settings.warmup} clean frames: nothing to fit thresholds on after the warm-up"
        )
    order = np.argsort(np.concatenate(kept), kind="stable")
    return ({name: np.concatenate(v)[order] for name, v in mapped.items()}, np.concatenate(kept)[order], factory)
