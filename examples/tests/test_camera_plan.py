"""The camera evaluation as a plan (guard_examples.camera_plan), run by guard as a user installs it:
the wheel in a venv outside the checkout, `guard evaluate --plan` and nothing else, on the real
YOLOv3-tiny and real footage."""

from __future__ import annotations

import json
import tomllib

import pytest

from guard_examples import camera_plan
from tests.wheel import install_wheel, run

pytestmark = pytest.mark.usefixtures("camera_packages")


def test_protocols_split_the_clips_as_documented():
    one = camera_plan.split_frames("one-clip", limit=4)
    stems = {split: {stem.rsplit("_", 1)[0] for stem, _ in frames} for split, frames in one.items()}
    assert stems == {"fit": {"bikes"}, "calibration": {"bikes"}, "test": {"carphone", "bigbuckbunny"}}
    timed = camera_plan.split_frames("time-split", limit=None)
    for clip in camera_plan.CLIPS:
        index = {
            split: [int(s.rsplit("_", 1)[1]) for s, _ in frames if s.startswith(clip)]
            for split, frames in timed.items()
        }
        calibrating = index["fit"] + index["calibration"]
        assert not set(index["fit"]) & set(index["calibration"])  # alternate frames, none in both
        assert min(index["test"]) - max(calibrating) > camera_plan.GAP  # later, after the gap
    with pytest.raises(ValueError, match="protocol"):
        camera_plan.write_plan(camera_plan.WORKSPACE / "build" / "unused", protocol="per-hour")


def test_a_plan_is_never_written_over_a_directory_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no plan.toml"):
        camera_plan.write_plan(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_per_camera_plan_makes_each_clip_a_camera_with_the_served_baselines(camera_models, tmp_path):
    from guard.api import load_plan

    plan = load_plan(
        camera_plan.write_plan(
            tmp_path / "plan", protocol="time-split", models=("yolov3_tiny",), quick=True, conditions=("dusk", "gain")
        )
    )
    assert plan.frames("test").conditions == ("dusk", "gain")
    config = tomllib.loads((tmp_path / "plan" / "models" / "yolov3_tiny" / "config.toml").read_text())
    assert config["cameras"]["baseline"]["warmup_frames"] == camera_plan.WARMUP
    for split in ("fit", "calibration", "test"):
        frames = plan.frames(split)
        assert frames.per_camera and set(frames.cameras) == set(camera_plan.CLIPS)
        assert [s.name for s in frames.sources] == list(camera_plan.CLIPS)  # a folder per clip


def test_the_installed_guard_evaluates_the_camera_plan(camera_models, tmp_path):
    plan = camera_plan.write_plan(tmp_path / "plan", models=("yolov3_tiny",), quick=True, per_camera=False)
    written = tomllib.loads(plan.read_text())
    assert [m["model"] for m in written["models"]] == ["models/yolov3_tiny"]
    assert "cameras" not in tomllib.loads((tmp_path / "plan" / "models" / "yolov3_tiny" / "config.toml").read_text())
    venv = install_wheel(tmp_path / "wheel")
    report = tmp_path / "report"
    run(
        [venv / "bin" / "guard", "evaluate", "--plan", plan, "--samples", "24", "--report-dir", report],
        cwd=tmp_path,  # outside the checkout: the plan directory is all it reads
        timeout=900,
    )
    results = json.loads((report / "results.json").read_text())
    assert results["meta"]["plan"] == str(plan.resolve())
    assert results["models"]["yolov3_tiny"]["output_kind"] == "detection"
    (row,) = [r for r in results["rows"] if r["key"].startswith("hide_pgd")]
    assert row["model"] == "yolov3_tiny" and row["n"] == 24
    assert row["rule"]["name"] == "hide" and 1 <= row["eligible"] <= 12  # carphone's frames show a person
    assert row["asr"] == row["successful"] / row["eligible"]
    assert row["served"]["successful"] == row["successful"] and 0 <= row["served"]["detected"] <= row["successful"]
    assert (report / "results.md").read_text().count("hide_pgd") >= 1
