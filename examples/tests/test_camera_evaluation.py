"""guard_examples.camera_evaluation --quick --protocol both: attacks on real footage sent through a live
gateway, end to end, under protocol A (calibrated on one clip) and B (per-scene calibration). The
report must have every section, protocol, model and row, its numbers must be counts, rates and
AUROCs in range, and B must never evaluate a frame it was calibrated on; whether any goal is met is
the full run's business, not a test's."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from guard.detection.calibration.references import References
from guard.tools.clean_data import encode_jpeg
from guard_examples import camera_evaluation, camera_gateway, camera_protocols, camera_rows, footage, patch_attack
from guard_examples.camera_gateway import Answers

pytestmark = pytest.mark.usefixtures("camera_packages")

ROWS = {"mobilenet_v2": {"clean_224_q95", "pgd", "mifgsm", "cw"}, "yolov3_tiny": {"patch", "random_patch"}}
A, B = camera_evaluation.ONE_CLIP, camera_evaluation.PER_SCENE


@pytest.fixture(scope="module")
def report(camera_models, tmp_path_factory):
    repository = camera_protocols.ONE_CLIP_REPOSITORY
    camera_evaluation.ensure_repository(repository)  # builds it (minutes) only where it is missing
    out = tmp_path_factory.mktemp("camera_evaluation")
    # B's quick repository is rebuilt (some 20 s) only when its recorded split is not this one.
    return out, camera_evaluation.run(
        out, repository, quick=True, progress=False, protocols=camera_evaluation.PROTOCOLS
    )


def _rate(value) -> bool:
    return value is None or (isinstance(value, float) and 0.0 <= value <= 1.0)


def _index(name: str) -> int:
    return int(name.rsplit("/", 1)[1])


def test_quick_run_writes_every_file_and_the_json_is_what_run_returned(report):
    out, results = report
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    for name in ("results.md", "patch.png"):
        assert (out / name).stat().st_size > 0, name
    assert list(results["protocols"]) == [A, B] and results["meta"]["protocols"] == [A, B]
    curves = {p.stem.removeprefix("roc_") for p in out.glob("roc_*.png")}
    expected = set()
    for key, protocol in results["protocols"].items():
        for row in protocol["rows"]:
            name = "_".join(
                [key.replace("-", "_"), row["model"], row["key"]] + ([] if row["scope"] == "all" else [row["scope"]])
            )
            if row["positives"] > 0:
                expected.add(name)
        if any(r["key"] == "patch" and r["eligible"] for r in protocol["rows"]):
            assert (out / f"examples_{key.replace('-', '_')}.png").stat().st_size > 0
    assert curves == expected
    text = (out / "results.md").read_text()
    headings = [
        "## Protocol A (one-clip)",
        "### Clean frames the guard was not calibrated on",
        "### Attacks on mobilenet_v2",
        "### Attacks on yolov3_tiny",
        "### Goals (protocol A)",
        "## Protocol B (per-scene)",
        "### Clean frames of the calibrated scenes (evaluation halves)",
        "### Unseen scenes: the photos",
        "### Attacks on mobilenet_v2",
        "### Attacks on yolov3_tiny",
        "### Goals (protocol B)",
        "## The patch",
        "## How to read this",
    ]
    at = 0
    for heading in headings:  # in this order: A first, then B
        found = text.find(heading, at)
        assert found >= 0, heading
        at = found + len(heading)
    assert results["meta"]["quick"] is True and results["meta"]["frames_through_gateway"] > 0
    for clip in results["protocols"][B]["split"]:  # the clean flag rate at served thresholds, per clip
        assert f"| {clip['clip']} |" in text and "<= " in text.split("## Protocol B")[1]


def _check_flag_counts(summary: dict, sources: dict) -> None:
    assert summary["n"] == sum(s["n"] for s in summary["by_source"].values()) == sum(sources.values())
    assert {k: s["n"] for k, s in summary["by_source"].items()} == sources
    assert summary["flagged"] == sum(s["flagged"] for s in summary["by_source"].values())
    assert 0.0 <= summary["flag_rate"] <= summary["flag_rate_upper_95"] <= 1.0
    for source in summary["by_source"].values():
        assert 0.0 <= source["rate"] <= source["upper_95"] <= 1.0
    assert summary["seconds_per_frame"] > 0
    assert len(summary["per_frame"]["names"]) == summary["n"]
    assert all(len(v) == summary["n"] for v in summary["per_frame"]["scores"].values())


@pytest.mark.parametrize("protocol", [A, B])
def test_clean_frames_are_counted_per_source_with_a_bound_and_operating_points_within_their_rate(report, protocol):
    found = report[1]["protocols"][protocol]
    assert set(found["clean"]) == set(ROWS) and set(found["calibration"]) == set(ROWS)
    for clean in found["clean"].values():
        _check_flag_counts(clean, found["sources"])
        assert _rate(clean["verdict_agreement"])
        assert set(clean["operating_points"]) == {"ensemble", *clean["detectors"]}
        for points in clean["operating_points"].values():
            for fpr, point in points.items():
                assert point["clean_rate"] <= float(fpr)
    if protocol == B:  # the scenes are the clean set; the photos are served and counted apart
        assert set(found["sources"]) == {s["clip"] for s in found["split"]} == set(camera_protocols.SCENES)
        assert set(found["unseen"]) == set(ROWS) and not set(found["unseen_sources"]) & set(found["sources"])
        for unseen in found["unseen"].values():
            _check_flag_counts(unseen, found["unseen_sources"])
    else:
        assert "unseen" not in found and "split" not in found and "bikes" not in found["sources"]


@pytest.mark.parametrize("protocol", [A, B])
def test_every_row_is_present_with_counts_rates_and_aurocs_in_range(report, protocol):
    results = report[1]
    found = results["protocols"][protocol]
    scopes = {"all"} if protocol == A else {"scenes", "photos"}
    for model, keys in ROWS.items():
        for key in keys:
            have = {r["scope"] for r in found["rows"] if r["model"] == model and r["key"] == key}
            # B: the classifier is attacked on both scopes; the patch needs a person, which the scenes have
            assert (
                have == scopes
                if model == "mobilenet_v2"
                else ("all" in have if protocol == A else "scenes" in have and have <= scopes)
            ), (model, key)
    for row in found["rows"]:
        assert 0 <= row["successful"] <= row["eligible"] and 0 <= row["positives"] <= row["frames"], row["key"]
        assert _rate(row["asr"]) and _rate(row["gateway"]) and _rate(row["flag_rate_all_frames"]), row["key"]
        assert row["seconds_per_frame"] > 0 and _rate(row["verdict_agreement"])
        assert sum(row["positives_by_source"].values()) == row["positives"]
        assert len(row["per_frame"]["names"]) == len(row["per_frame"]["verdicts"]) == row["frames"]
        assert not any(
            n.startswith(f"{patch_attack.TRAINING_CLIP}/")
            for n in row["per_frame"]["names"]
            if row["model"] == "yolov3_tiny"
        ), "the patch is pasted on the clip it was trained on"
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
    goals = {(g["model"], g["attack"], g["scope"]) for g in found["goals"]}
    scope = "all" if protocol == A else "scenes"
    assert goals == {("mobilenet_v2", "pgd", scope), ("mobilenet_v2", "mifgsm", scope), ("yolov3_tiny", "patch", scope)}
    assert all(g["met"] in (True, False, None) for g in found["goals"])
    patch = results["patch"]
    assert patch["steps"] == 2 and patch["side"] == 48 and patch["seconds"] > 0
    assert 0.0 <= patch["training_max_person_score_patched"] <= 1.0


def test_per_scene_never_evaluates_a_frame_it_calibrated_on(report):
    """B's split, checked three ways: the indices it reports, the frames it served, and what its
    repository was actually calibrated on (the JPEG bytes in references.npz, traced back to frames)."""
    found = report[1]["protocols"][B]
    splits = {s["clip"]: s for s in found["split"]}
    for clip, s in splits.items():
        calibration, evaluation, gap = set(s["calibration"]), set(s["evaluation"]), s["gap"]
        assert calibration and evaluation and gap >= 1 and not calibration & evaluation, clip
        assert min(evaluation) - max(calibration) > gap, clip  # the gap separates the halves
        assert s["calibration_half"][0] <= min(calibration) and max(calibration) < s["calibration_half"][1]
        assert s["evaluation_half"][0] <= min(evaluation) and max(evaluation) < s["evaluation_half"][1] <= s["frames"]
    evaluated = {f"{c}/{i:03d}" for c, s in splits.items() for i in s["evaluation"]}
    for clean in found["clean"].values():
        assert set(clean["per_frame"]["names"]) == evaluated
    scene_names = set(found["classifier_targets"]) | {n for r in found["rows"] for n in r["per_frame"]["names"]}
    assert {n for n in scene_names if n.split("/")[0] in splits} <= evaluated
    repository = Path(found["repository"])
    assert camera_protocols.recorded_split(repository) == {"scenes": found["split"]}
    frames_of: dict[bytes, list[tuple[str, int]]] = {}  # JPEG bytes -> the frames that encode to them
    for clip in splits:
        for i, rgb in enumerate(footage.video_frames(clip)):
            frames_of.setdefault(encode_jpeg(rgb), []).append((clip, i))
    for model in ROWS:
        items = References.load(repository / model / "references.npz").inputs["image"]
        assert len(items) >= len(splits)
        for item in items:
            traced = frames_of.get(bytes(item))
            assert traced, "a calibration sample that is no frame of the clips"
            assert any(i in splits[clip]["calibration"] for clip, i in traced), traced
            assert all(i < min(splits[clip]["evaluation"]) - splits[clip]["gap"] for clip, i in traced), traced


def test_split_clip_halves_a_clip_by_time_with_a_gap():
    bikes = camera_protocols.split_clip("bikes", 250)
    assert bikes.calibration == tuple(range(125)) and bikes.evaluation == tuple(range(130, 250))
    quick = camera_protocols.split_clip("carphone", 120, quick=True)
    assert len(quick.calibration) == camera_protocols.QUICK_CALIBRATION and quick.calibration[-1] == 59
    assert len(quick.evaluation) == camera_protocols.QUICK_EVALUATION and quick.evaluation[0] == 65
    with pytest.raises(ValueError):
        camera_protocols.split_clip("short", 10, gap=5)


def test_the_served_ensemble_is_the_one_the_server_loads_and_checks(tmp_path):
    from guard.api import ConfigError, Fisher
    from guard_examples.paths import REPOSITORY

    directory = tmp_path / "digits"
    shutil.copytree(REPOSITORY / "digits", directory)
    combiner = camera_gateway.served_combiner(directory)
    assert isinstance(combiner, Fisher) and combiner.min_p_threshold is not None  # the demo serves omnibus
    np.savez(directory / "ensemble.npz", someone_else=np.arange(5.0))  # references of other detectors
    with pytest.raises(ConfigError, match="ensemble.references"):
        camera_gateway.served_combiner(directory)


def test_a_person_vanishes_only_without_an_overlapping_person_box():
    clean = np.array([[0, 0, 10, 20], [50, 50, 60, 70]], np.float32)
    after = np.array([[1, 1, 10, 20]], np.float32)
    assert camera_rows.vanished(clean, after).tolist() == [False, True]
    assert camera_rows.vanished(clean, np.zeros((0, 4), np.float32)).tolist() == [True, True]
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
