"""Per-camera baselines (guard.detection.baselines): warm-up, the mapping onto the factory's scale,
the bounds an attacker who owns a camera runs into, and the calibration-side simulation."""

from __future__ import annotations

import numpy as np
import pytest

from guard.detection.baselines import BUCKET_HOURS, Baselines, BaselineSettings, Factory, robust, simulate

FACTORY = Factory({"d": 10.0}, {"d": 2.0})


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def warmed(settings: BaselineSettings, values, clock=None, camera: str = "c") -> Baselines:
    baselines = Baselines(settings, FACTORY, clock=clock or Clock())
    for v in values:
        baselines.observe(camera, {"d": float(v)}, False)
    return baselines


def mapped(baselines: Baselines, camera: str | None, values) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return baselines.normalise([camera], [slice(0, len(values))], {"d": values})["d"]


def test_a_camera_is_judged_as_it_is_until_its_warm_up_ends_then_against_its_own_scene():
    settings = BaselineSettings(warmup=20, max_offset=1000.0)
    scene = np.random.default_rng(0).normal(110.0, 4.0, 20)  # far from the factory's 10 +- 2
    baselines = warmed(settings, scene[:-1])
    assert not baselines.camera("c").warm
    np.testing.assert_array_equal(mapped(baselines, "c", [110.0]), [110.0])
    baselines.observe("c", {"d": float(scene[-1])}, False)
    camera = baselines.camera("c")
    assert camera.warm and baselines.warm == 1
    location, spread = robust(scene)
    assert camera.location["d"] == location and camera.scale["d"] == spread
    # The scene's median lands on the factory's; a jump of k of the camera's spreads, on k of the factory's.
    np.testing.assert_allclose(mapped(baselines, "c", [location, location + 3 * spread]), [10.0, 16.0])
    np.testing.assert_array_equal(mapped(baselines, None, [110.0]), [110.0])  # no camera: as it is
    np.testing.assert_array_equal(mapped(baselines, "other", [110.0]), [110.0])


def test_a_still_scene_gets_the_floor_spread_not_none():
    baselines = warmed(BaselineSettings(warmup=10, min_scale=0.25), [50.0 + 0.1 * (i % 2) for i in range(10)])
    assert baselines.camera("c").scale["d"] == 0.25 * FACTORY.scale["d"]


def test_a_warm_up_that_shows_nothing_of_a_detector_leaves_it_judged_as_calibrated():
    """A detector of boxes scores an empty street 0 on every frame: once people appear its scores
    say nothing relative to that warm-up, so the camera is judged on it as calibrated."""
    baselines = warmed(BaselineSettings(warmup=10), [0.0] * 10)
    camera = baselines.camera("c")
    assert camera.warm and camera.location["d"] == FACTORY.location["d"] and camera.scale["d"] == FACTORY.scale["d"]
    np.testing.assert_array_equal(mapped(baselines, "c", [0.0, 13.0]), [0.0, 13.0])


def test_a_warm_up_beyond_the_ceiling_is_judged_from_the_ceiling():
    settings = BaselineSettings(warmup=10, max_offset=20.0)
    baselines = warmed(settings, [1000.0 + (i % 3) for i in range(10)])
    assert baselines.camera("c").location["d"] == 10.0 + 20.0 * 2.0
    assert mapped(baselines, "c", [1000.0])[0] > 10.0 + 100 * 2.0  # still far out: flagged, not silenced


def test_flagged_frames_do_not_move_the_baseline():
    clock = Clock()
    baselines = warmed(BaselineSettings(warmup=10), [10.0 + (i % 3) for i in range(10)], clock)
    before = dict(baselines.camera("c").location)
    for _ in range(100):
        clock.now += 1.0
        baselines.observe("c", {"d": 500.0}, True)
    assert baselines.camera("c").location == before


def test_a_clean_frame_moves_the_baseline_by_adapt_rate_of_the_gap():
    clock = Clock()
    settings = BaselineSettings(warmup=10, adapt_rate=0.1, max_drift_per_hour=1000.0)
    baselines = warmed(settings, [10.0 + (i % 3) for i in range(10)], clock)
    camera = baselines.camera("c")
    start = camera.location["d"]
    clock.now += 1.0
    baselines.observe("c", {"d": start + 1.0}, False)
    assert camera.location["d"] == pytest.approx(start + 0.1)
    assert camera.drift() == pytest.approx(0.1 / camera.scale["d"])


@pytest.mark.parametrize("fps", [1.0, 25.0])
def test_an_attacker_moves_the_baseline_at_most_its_hourly_bound(fps):
    """Frames crafted to pass as clean while pulling the baseline up as fast as it goes, for an
    hour of simulated time: the baseline moves no more than max_drift_per_hour spreads plus the
    bucket's depth, whatever the frame rate, and the next hour adds at most the hourly rate."""
    clock = Clock()
    settings = BaselineSettings(warmup=10, adapt_rate=0.5, max_drift_per_hour=2.0, max_offset=1e6)
    baselines = warmed(settings, [10.0 + (i % 3) for i in range(10)], clock)
    camera = baselines.camera("c")
    spread, start = camera.scale["d"], camera.location["d"]
    frames = int(3600 * fps)
    for _ in range(frames):
        clock.now += 1.0 / fps
        baselines.observe("c", {"d": camera.location["d"] + 1e6}, False)
    first_hour = camera.location["d"] - start
    assert first_hour <= (2.0 + BUCKET_HOURS * 2.0) * spread + 1e-9
    assert first_hour >= 2.0 * spread * 0.99  # and the bound is what it achieves, not far below
    for _ in range(frames):
        clock.now += 1.0 / fps
        baselines.observe("c", {"d": camera.location["d"] + 1e6}, False)
    assert camera.location["d"] - start - first_hour <= 2.0 * spread + 1e-9


def test_cameras_over_target_count_those_whose_rate_is_significantly_above_it():
    baselines = Baselines(BaselineSettings(warmup=5, rate_window=200), FACTORY, target=0.05, clock=Clock())
    for i in range(200):
        baselines.observe("quiet", {"d": 10.0}, i % 50 == 0)  # 2%
        baselines.observe("loud", {"d": 10.0}, i % 4 == 0)  # 25%
    assert baselines.camera("loud").flag_rate() == pytest.approx(0.25)
    assert baselines.over_target == 1 and baselines.warm == 2
    for _ in range(200):  # the window forgets: the loud camera goes quiet
        baselines.observe("loud", {"d": 10.0}, False)
    assert baselines.over_target == 0


def test_cameras_are_bounded_least_recently_seen_dropped():
    baselines = Baselines(BaselineSettings(warmup=1), FACTORY, max_cameras=3, clock=Clock())
    for camera in ("a", "b", "c", "a", "d"):
        baselines.observe(camera, {"d": 10.0}, False)
    assert baselines.camera("b") is None and baselines.camera("a") is not None
    assert baselines.warm == 3


def test_simulate_maps_each_camera_after_its_own_warm_up_and_drops_short_ones():
    rng = np.random.default_rng(1)
    a, b, short = rng.normal(0, 1, 30), rng.normal(100, 5, 40), rng.normal(50, 1, 10)
    scores = {"d": np.concatenate([a, b, short])}
    cameras = np.array(["a"] * 30 + ["b"] * 40 + ["s"] * 10)
    settings = BaselineSettings(warmup=10, max_offset=1e6)
    out, kept, factory = simulate(scores, cameras, settings)
    np.testing.assert_array_equal(kept, np.r_[10:30, 40:70])
    assert factory == Factory.fit(scores, cameras)  # every camera's frames, warm-ups and short ones included
    for rows, values in ((slice(0, 20), a), (slice(20, 50), b)):
        location, spread = robust(values[:10])
        spread = max(spread, settings.min_scale * factory.scale["d"])
        expected = factory.location["d"] + (values[10:] - location) * factory.scale["d"] / spread
        np.testing.assert_allclose(out["d"][rows], expected)
    with pytest.raises(ValueError, match="more than 10 clean frames"):
        simulate({"d": short}, np.array(["s"] * 10), settings)


def test_a_camera_left_idle_gains_no_more_than_the_buckets_depth():
    """Waiting does not bank drift: after ten idle hours the baseline still moves at most the
    bucket's depth at once."""
    clock = Clock()
    settings = BaselineSettings(warmup=10, adapt_rate=1.0, max_drift_per_hour=2.0, max_offset=1e6)
    baselines = warmed(settings, [10.0 + (i % 3) for i in range(10)], clock)
    camera = baselines.camera("c")
    start = camera.location["d"]
    clock.now += 10 * 3600.0
    for _ in range(10):
        baselines.observe("c", {"d": camera.location["d"] + 1e6}, False)
    assert camera.location["d"] - start <= BUCKET_HOURS * 2.0 * camera.scale["d"] + 1e-9


def test_frames_of_a_camera_are_cross_fitted_in_stretches_of_time():
    from guard.detection.calibration.derive import fold_assignment
    from guard.detection.calibration.references import References

    cameras = np.array(["a"] * 10 + ["b"] * 5)
    folds = fold_assignment(References({"x": np.zeros((15, 1))}, None, cameras), 5, 0)
    np.testing.assert_array_equal(folds, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0, 1, 2, 3, 4])
    shuffled = fold_assignment(References({"x": np.zeros((15, 1))}), 5, 0)
    assert sorted(np.bincount(shuffled)) == [3] * 5 and not (np.diff(shuffled) >= 0).all()


def test_the_factory_spread_is_a_cameras_own_not_the_distance_between_scenes():
    rng = np.random.default_rng(2)
    scores = {"d": np.concatenate([rng.normal(0, 1, 400), rng.normal(100, 3, 400)])}
    cameras = np.array(["a"] * 400 + ["b"] * 400)
    pooled, own = Factory.fit(scores), Factory.fit(scores, cameras)
    assert pooled.scale["d"] > 30  # the two scenes' distance
    assert own.scale["d"] == pytest.approx(2.0, rel=0.15)  # the median of about 1 and about 3
    assert own.location == pooled.location
    assert own.unit("d") == pooled.scale["d"]  # the ceiling's unit: how far the scenes lie apart
