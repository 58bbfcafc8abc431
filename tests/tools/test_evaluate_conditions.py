"""`[data] conditions` in an image plan: the test frames judged again, per camera, under simulated
conditions ramped over each camera's judged frames, through the live gateway."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tools.test_evaluate_images import _per_camera_plan


def test_a_condition_ramps_over_each_cameras_judged_frames_and_spares_the_warm_up():
    from guard.tools.evaluation.image_conditions import under_condition

    frames = [np.full((8, 8, 3), 200, np.uint8) for _ in range(9)]
    cameras = ["a"] * 5 + ["b"] * 4
    dusk = under_condition(frames, cameras, 2, "dusk", seed=0)
    # Warm-up frames untouched; each camera's judged frames from x1.0 (progress 0) to x0.6 (progress 1).
    assert [int(f[0, 0, 0]) for f in dusk] == [200, 200, 200, 160, 120, 200, 200, 200, 120]
    noise = [np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8) for _ in range(5)]
    jpeg = under_condition(noise, ["a"] * 5, 2, "jpeg", seed=0)
    assert np.array_equal(jpeg[2], noise[2])  # progress 0, the camera's own quality 90: not re-encoded
    assert not np.array_equal(jpeg[4], noise[4])  # quality 40: it is
    with pytest.raises(ValueError, match="unknown condition 'fog'"):
        under_condition(frames, cameras, 2, "fog", 0)


def test_a_plan_names_only_known_conditions_once(tmp_path):
    from guard.protocol.errors import ConfigError
    from guard.tools.evaluation.plan import load_plan

    plan = _per_camera_plan(tmp_path)
    text = plan.read_text().replace("[data]\n", "[data]\ncameras = true\n")
    for bad in ('["fog"]', '["dusk", "dusk"]', '"dusk"'):
        plan.write_text(text.replace("[data]\n", f"[data]\nconditions = {bad}\n"))
        with pytest.raises(ConfigError, match=r"key 'data.conditions': expected a list of distinct condition names"):
            load_plan(plan)
    plan.write_text(text.replace("[data]\n", '[data]\nconditions = ["dusk", "gain"]\n'))
    assert load_plan(plan).frames("test").conditions == ("dusk", "gain")
    assert load_plan(plan).frames("test").ramp_hours == 1.0  # the default: a ramp spans an hour
    for bad in ("-1.0", '"an hour"', "inf"):
        plan.write_text(text.replace("[data]\n", f"[data]\nramp_hours = {bad}\n"))
        with pytest.raises(ConfigError, match=r"key 'data.ramp_hours': expected a number of hours, 0 or more"):
            load_plan(plan)


def test_each_condition_is_judged_per_camera_after_a_warm_up_of_its_own(tmp_path, monkeypatch):
    from guard.tools.cli import main
    from guard.tools.evaluation.client import GatewayClient

    sent: list[list[str] | None] = []
    real = GatewayClient.infer_encoded

    def recording(self, model, items, desc=None, cameras=None):
        sent.append(None if cameras is None else list(cameras))
        return real(self, model, items, desc, cameras)

    monkeypatch.setattr(GatewayClient, "infer_encoded", recording)
    from guard.tools.evaluation import image_conditions

    clocks: list[tuple[dict[str, int], float]] = []
    simulated = image_conditions.simulated_hours

    def recording_clock(baselines, judged, hours):
        clocks.append((dict(judged), hours))
        return simulated(baselines, judged, hours)

    monkeypatch.setattr(image_conditions, "simulated_hours", recording_clock)
    plan = _per_camera_plan(tmp_path)
    plan.write_text(plan.read_text().replace("[data]\n", '[data]\ncameras = true\nconditions = ["dusk", "haze"]\n'))
    report = tmp_path / "report"
    assert main(["evaluate", "--plan", str(plan), "--report-dir", str(report), "--workdir", str(tmp_path / "w")]) == 0
    rows = json.loads((report / "results.json").read_text())["models"]["detector"]["conditions"]
    assert list(rows) == ["dusk", "haze"]
    for row in rows.values():
        # 8 frames per camera, 3 of them its warm-up: 5 judged each.
        assert row["n"] == 10 and {c: r["n"] for c, r in row["cameras"].items()} == {"cam_a": 5, "cam_b": 5}
        assert 0.0 <= row["rate"] <= row["upper_95"] <= 1.0
    # A camera of its own per condition, so its baseline warms up on the frames before the change.
    assert ["cam_a~dusk"] * 8 + ["cam_b~dusk"] * 8 in sent and ["cam_a~haze"] * 8 + ["cam_b~haze"] * 8 in sent
    # The gateway runs in this process: each camera's judged frames span an hour of its baseline clock.
    assert clocks == [({"cam_a~dusk": 5, "cam_b~dusk": 5}, 1.0), ({"cam_a~haze": 5, "cam_b~haze": 5}, 1.0)]
    assert all(row["ramp_hours"] == 1.0 for row in rows.values())
    text = (report / "results.md").read_text()
    assert "detector: clean test frames under simulated conditions" in text and "| haze | " in text
    assert "over 1 simulated hours of each camera's baseline clock" in text
