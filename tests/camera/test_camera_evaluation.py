"""models.camera_evaluation --quick: attacks on real footage sent through a live gateway, end to end.
The report must have every section, model and row, and its numbers must be counts, rates and AUROCs
in range; whether any goal is met is the full run's business, not a test's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models import camera_evaluation, patch_attack
from models.camera_gateway import Answers, operating_threshold

pytestmark = pytest.mark.usefixtures("camera_packages")

ROWS = {"mobilenet_v2": {"clean_224_q95", "pgd", "mifgsm", "cw"}, "yolov3_tiny": {"patch", "random_patch"}}


@pytest.fixture(scope="module")
def report(camera_models, tmp_path_factory):
    from models.camera_guard import DEFAULT_REPOSITORY

    camera_evaluation.ensure_repository(DEFAULT_REPOSITORY)  # builds it (minutes) only where it is missing
    out = tmp_path_factory.mktemp("camera_evaluation")
    return out, camera_evaluation.run(out, DEFAULT_REPOSITORY, quick=True, progress=False)


def _rate(value) -> bool:
    return value is None or (isinstance(value, float) and 0.0 <= value <= 1.0)


def test_quick_run_writes_every_file_and_the_json_is_what_run_returned(report):
    out, results = report
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    for name in ("results.md", "patch.png"):
        assert (out / name).stat().st_size > 0, name
    curves = {p.stem.removeprefix("roc_") for p in out.glob("roc_*.png")}
    for row in results["rows"]:
        assert (f"{row['model']}_{row['key']}" in curves) == (row["positives"] > 0), row["key"]
    text = (out / "results.md").read_text()
    for heading in ("## Clean frames", "## Attacks on mobilenet_v2", "## Attacks on yolov3_tiny", "## Goals",
                    "## The patch", "## How to read this"):
        assert heading in text, heading
    assert results["meta"]["quick"] is True and results["meta"]["frames_through_gateway"] > 0
    if any(r["key"] == "patch" and r["eligible"] for r in results["rows"]):
        assert (out / "examples.png").stat().st_size > 0


def test_clean_frames_are_counted_per_source_with_a_bound_and_operating_points_within_their_rate(report):
    _, results = report
    assert set(results["clean"]) == set(ROWS)
    frames = sum(results["meta"]["sources"].values())
    for clean in results["clean"].values():
        assert clean["n"] == sum(s["n"] for s in clean["by_source"].values()) == frames
        assert clean["flagged"] == sum(s["flagged"] for s in clean["by_source"].values())
        assert 0.0 <= clean["flag_rate"] <= clean["flag_rate_upper_95"] <= 1.0
        for source in clean["by_source"].values():
            assert 0.0 <= source["rate"] <= source["upper_95"] <= 1.0
        assert _rate(clean["verdict_agreement"]) and clean["seconds_per_frame"] > 0
        assert set(clean["operating_points"]) == {"ensemble", *clean["detectors"]}
        for points in clean["operating_points"].values():
            for fpr, point in points.items():
                assert point["clean_rate"] <= float(fpr)
        assert len(clean["per_frame"]["names"]) == clean["n"]
        assert all(len(v) == clean["n"] for v in clean["per_frame"]["scores"].values())


def test_every_row_is_present_with_counts_rates_and_aurocs_in_range(report):
    _, results = report
    found = {m: {r["key"] for r in results["rows"] if r["model"] == m} for m in ROWS}
    assert found == ROWS
    for row in results["rows"]:
        assert 0 <= row["successful"] <= row["eligible"] and 0 <= row["positives"] <= row["frames"], row["key"]
        assert _rate(row["asr"]) and _rate(row["gateway"]) and _rate(row["flag_rate_all_frames"]), row["key"]
        assert row["seconds_per_frame"] > 0 and _rate(row["verdict_agreement"])
        assert sum(row["positives_by_source"].values()) == row["positives"]
        assert len(row["per_frame"]["names"]) == len(row["per_frame"]["verdicts"]) == row["frames"]
        for scorer, metrics in row["scorers"].items():
            assert all(_rate(v) for v in metrics.values()), (row["key"], scorer, metrics)
            if row["positives"] == 0:
                assert metrics["det@0.05"] is None and metrics["auroc"] is None
        if "asr_by_source" in row:
            assert sum(k for k, _ in row["asr_by_source"].values()) == row["successful"]
            assert sum(e for _, e in row["asr_by_source"].values()) == row["eligible"]
        if row["model"] == "yolov3_tiny":
            assert _rate(row["asr_strict"]) and (row["asr_strict"] or 0) <= (row["asr"] or 0)
        if row["model"] == "mobilenet_v2" and row["kind"] == "attack":
            assert _rate(row["asr_before_encoding"]) and _rate(row["asr_torch_after_jpeg"])
            assert row["jpeg_quality"] >= 95 and math.isclose(row["eps"] or 8 / 255, 8 / 255)
    goals = {(g["model"], g["attack"]) for g in results["goals"]}
    assert goals == {("mobilenet_v2", "pgd"), ("mobilenet_v2", "mifgsm"), ("yolov3_tiny", "patch")}
    assert all(g["met"] in (True, False, None) for g in results["goals"])
    patch = results["patch"]
    assert patch["steps"] == 2 and patch["side"] == 48 and patch["seconds"] > 0
    assert 0.0 <= patch["training_max_person_score_patched"] <= 1.0


def test_operating_threshold_flags_at_most_the_rate_of_clean_scores():
    clean = np.random.default_rng(0).normal(size=300)
    for fpr in (0.01, 0.05):
        assert (clean > operating_threshold(clean, fpr)).sum() <= math.floor(fpr * 300)
        assert (clean > operating_threshold(clean, fpr)).sum() >= math.floor(fpr * 300) - 1
    assert (np.ones(10) > operating_threshold(np.ones(10), 0.05)).sum() == 0  # ties never over-flag


def test_a_person_vanishes_only_without_an_overlapping_person_box():
    clean = np.array([[0, 0, 10, 20], [50, 50, 60, 70]], np.float32)
    after = np.array([[1, 1, 10, 20]], np.float32)
    assert camera_evaluation.vanished(clean, after).tolist() == [False, True]
    assert camera_evaluation.vanished(clean, np.zeros((0, 4), np.float32)).tolist() == [True, True]
    answers = Answers({}, np.array(["clean"]), 1.0, detections=[[]])
    assert answers.persons(0).shape == (0, 4)


def test_the_patch_lands_on_the_chest_and_is_clipped_at_the_frame_edges():
    settings = patch_attack.PatchSettings()
    patch = torch.ones(3, settings.side, settings.side)
    frame = np.zeros((100, 100, 3), np.uint8)
    standing = patch_attack.paste(frame, patch, np.array([[40, 10, 60, 90]]), settings)  # 4x taller than wide
    ys, xs = np.nonzero(standing[..., 0])
    assert abs(ys.mean() - (10 + settings.torso * 80)) <= 1 and abs(xs.mean() - 50) <= 1
    close = patch_attack.paste(frame, patch, np.array([[0, 0, 100, 100]]), settings)  # head and shoulders
    ys, _ = np.nonzero(close[..., 0])
    assert abs(ys.mean() - settings.torso_close * 100) <= 1
    edge = patch_attack.paste(frame, patch, np.array([[-20, -30, 20, 60]]), settings)
    assert edge.shape == frame.shape and edge[0, 0, 0] == 255
