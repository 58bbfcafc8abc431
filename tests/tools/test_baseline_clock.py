"""guard.tools.evaluation.baseline_clock: while a simulated condition runs, each listed camera's
judged frames span the ramp's hours on its baseline clock, so the baseline follows a slow change as
far as its hourly bound allows and no further; cameras not listed, and everything afterwards, keep
the wall clock."""

from __future__ import annotations

import numpy as np

from guard.detection.baselines import BUCKET_HOURS, Baselines, BaselineSettings, Factory
from guard.tools.evaluation.baseline_clock import simulated_hours

SETTINGS = BaselineSettings(warmup=5)
JUDGED = 40


def baselines() -> Baselines:
    factory = Factory(location={"d": 0.0}, scale={"d": 1.0})
    return Baselines(SETTINGS, factory, clock=lambda: 1000.0)  # a wall clock that never moves


def drive(b: Baselines, camera: str) -> float:
    """A warm-up at score 0 (spread 1: noise of sd 1), then a slow ramp to 5 spreads, every frame
    judged clean: how far the camera's baseline followed, in spreads."""
    rng = np.random.default_rng(0)
    for score in rng.normal(0.0, 1.0, SETTINGS.warmup):
        b.observe(camera, {"d": float(score)}, False)
    for score in np.linspace(0.0, 5.0, JUDGED):
        b.observe(camera, {"d": float(score)}, False)
    baseline = b.camera(camera)
    assert baseline is not None and baseline.warm
    return baseline.drift()


def test_a_ramp_over_an_hour_is_followed_up_to_the_hourly_bound_and_no_further():
    bound = SETTINGS.max_drift_per_hour * (BUCKET_HOURS + 1.0)  # a full bucket, then an hour's refill
    wall, simulated, long = baselines(), baselines(), baselines()
    on_the_wall = drive(wall, "cam")
    with simulated_hours(simulated, {"cam": JUDGED}, hours=1.0):
        in_an_hour = drive(simulated, "cam")
    with simulated_hours(long, {"cam": JUDGED}, hours=24.0):
        in_a_day = drive(long, "cam")
    # On the wall clock no time passes: only the bucket it starts with (some of it spent on the
    # ramp's first frames, below the warm-up's noisy location).
    bucket = SETTINGS.max_drift_per_hour * BUCKET_HOURS
    assert 0.8 * bucket < on_the_wall <= bucket + 1e-9
    assert on_the_wall < in_an_hour <= bound + 1e-9
    assert in_an_hour > 0.8 * bound  # a 5-spread ramp pulls as hard as it may
    assert in_a_day > bound  # given the hours, it follows further


def test_cameras_not_listed_and_everything_after_keep_the_wall_clock():
    ticks = iter(range(10**6))

    def wall() -> float:  # 90 s a reading: the unlisted camera's 45 frames take over an hour
        return 90.0 * next(ticks)

    b = Baselines(SETTINGS, Factory(location={"d": 0.0}, scale={"d": 1.0}), clock=wall)
    with simulated_hours(b, {"cam": JUDGED}, hours=1.0):
        other = drive(b, "other")
    # It followed on the wall clock's hour, past the bucket it started with.
    assert other > SETTINGS.max_drift_per_hour * BUCKET_HOURS
    assert b.clock is wall and "observe" not in vars(b)  # the class's own method again


def test_no_hours_change_nothing():
    b = baselines()
    with simulated_hours(b, {"cam": JUDGED}, hours=0.0):
        assert "observe" not in vars(b)
