"""Image plans for a model with per-camera baselines: the plan must say which camera each frame comes
from, and the evaluation judges each camera only after its warm-up frames and sends the camera ids to
the gateway."""

from __future__ import annotations

import json

import pytest

from tests.tools.test_evaluate_images import _per_camera_plan


def test_a_model_with_per_camera_baselines_needs_frames_that_say_their_camera(tmp_path):
    from guard.protocol.errors import ConfigError
    from guard.tools.evaluation.plan import load_plan

    plan = _per_camera_plan(tmp_path)
    with pytest.raises(ConfigError, match=r"key 'models\[0\].model': expected a model without \[cameras.baseline\]"):
        load_plan(plan)
    plan.write_text(plan.read_text().replace("[data]\n", "[data]\ncameras = true\n"))
    test = load_plan(plan).frames("test")
    assert test.per_camera and test.cameras == ("cam_a",) * 8 + ("cam_b",) * 8


def test_per_camera_evaluation_judges_each_camera_after_its_warm_up_and_sends_its_id(tmp_path):
    import urllib.request

    from guard.serving.background import BackgroundServer
    from guard.serving.settings import ServerSettings
    from guard.tools.cli import main
    from guard.tools.evaluation.client import GatewayClient
    from guard.tools.evaluation.frame_data import judged_rows

    assert judged_rows(("a", "a", "b", "a", "b", "b", "b"), 2).tolist() == [3, 5, 6]
    plan = _per_camera_plan(tmp_path)
    plan.write_text(plan.read_text().replace("[data]\n", "[data]\ncameras = true\n"))
    report, work = tmp_path / "report", tmp_path / "work"
    assert main(["evaluate", "--plan", str(plan), "--report-dir", str(report), "--workdir", str(work)]) == 0
    results = json.loads((report / "results.json").read_text())
    summary = results["models"]["detector"]
    assert summary["warmup_frames_per_camera"] == 3 and summary["n_test"] == 16 - 2 * 3
    assert not set(results["sample_indices"]) & {0, 1, 2, 8, 9, 10}  # no warm-up frame is attacked
    # The calibrated copy, served again: the frames reach it as their cameras' (per-camera metrics).
    settings = ServerSettings(repository=work / "repository", grpc_port=0, metrics_port=0)
    with BackgroundServer(settings) as srv, GatewayClient(srv.grpc_url) as client:
        frames = [(tmp_path / "cam_a" / f).read_bytes() for f in sorted(p.name for p in (tmp_path / "cam_a").iterdir())]
        client.infer_encoded("detector", frames[:5], cameras=["lobby"] * 2 + ["gate"] * 3)
        metrics = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
    assert 'guard_camera_requests_total{camera="lobby",model="detector"} 2.0' in metrics
    assert 'guard_camera_requests_total{camera="gate",model="detector"} 3.0' in metrics
