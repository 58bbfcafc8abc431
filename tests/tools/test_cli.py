"""The `guard` command line as a user runs it: serve on free ports, and calibrate a model."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import tritonclient.grpc as triton
from scipy.stats import binom

from guard.serving.model_config import load_model_config
from tests.conftest import DEMO_REPOSITORY, ROOT


def test_serve_logs_the_chosen_ports_and_stops_on_sigterm(held_out):
    process = subprocess.Popen(
        [sys.executable, "-m", "guard", "serve", "--grpc-port", "0", "--metrics-port", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline, ready = time.monotonic() + 120, None
        lines = []
        while time.monotonic() < deadline and ready is None:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            ready = re.search(r"guard ready: grpc=([\d.]+):(\d+) metrics=([\d.]+):(\d+)", line)
        assert ready, "".join(lines)
        with triton.InferenceServerClient(f"127.0.0.1:{ready.group(2)}") as client:
            assert client.is_server_ready()
            tensor = triton.InferInput("input", [1, 1, 16, 16], "FP32")
            tensor.set_data_from_numpy(held_out[0][:1])
            assert client.infer("digits", [tensor]).as_numpy("logits").shape == (1, 10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()


def calibrate(tmp_path, data, *extra, model="digits"):
    """Run `guard calibrate` as a user would, into tmp_path/repo/mine."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "guard",
            "calibrate",
            "--onnx",
            str(DEMO_REPOSITORY / model / "model.onnx"),
            "--name",
            "mine",
            "--repository",
            str(tmp_path / "repo"),
            "--data",
            str(data),
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_calibrate_brings_an_onnx_model_under_the_guard(tmp_path):
    from tests.conftest import demo_split as load_split

    x, y = load_split("calibration")
    data = tmp_path / "clean.npz"
    np.savez(data, x=x, y=y)
    result = calibrate(tmp_path, data, "--target-fpr", "0.1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_calibration"] + report["n_holdout"] == len(x)
    assert report["calibration_fpr"] <= 0.1
    # Measured on samples calibration never saw: even at exactly the target, more flags than this
    # would happen once in a million runs.
    n = report["n_holdout"]
    assert report["holdout_fpr"] * n <= binom.isf(1e-6, n, 0.1)
    assert report["holdout_fpr"] <= report["holdout_fpr_upper_95"]
    assert report["holdout_accuracy"] > 0.9
    config = load_model_config(tmp_path / "repo" / "mine")
    assert config.detection.target_fpr == 0.1
    # The defaults: squeezers, the feature-space detector (the model has a linear head), the margin.
    assert [d["name"] for d in config.detection.detectors] == [
        "bit_depth_5",
        "median_2x2",
        "mahalanobis",
        "confidence_margin",
    ]
    assert all(d["threshold"] == report["thresholds"][d["name"]] for d in config.detection.detectors)
    assert config.calibration.references == "references.npz" and config.calibration.fingerprint == report["fingerprint"]
    assert config.calibration.folds == 5  # mahalanobis learned from the samples: its thresholds are cross-fitted


def test_calibrate_rejects_data_of_the_wrong_shape(tmp_path):
    data = tmp_path / "clean.npz"
    np.savez(data, x=np.zeros((10, 1, 8, 8), np.float32))
    result = calibrate(tmp_path, data)
    assert result.returncode == 2
    assert "samples of shape [N, 1, 16, 16]" in result.stderr


def test_calibrate_takes_the_squeezers_it_is_given(tmp_path):
    from tests.conftest import demo_split as load_split

    data = tmp_path / "clean.npz"
    np.savez(data, x=load_split("calibration")[0])
    result = calibrate(
        tmp_path,
        data,
        "--bit-depth",
        "3",
        "--median",
        "3",
        "--median",
        "2",
        "--no-mahalanobis",
        "--no-confidence-margin",
    )
    assert result.returncode == 0, result.stderr
    config = load_model_config(tmp_path / "repo" / "mine")
    assert [d["name"] for d in config.detection.detectors] == ["bit_depth_3", "median_3x3", "median_2x2"]
    assert "holdout_accuracy" not in json.loads(result.stdout)  # no labels given


def test_calibrate_adds_feature_and_trigger_detectors(tmp_path):
    from tests.conftest import demo_split as load_split

    x, y = load_split("calibration")
    data = tmp_path / "clean.npz"
    np.savez(data, x=x, y=y)
    result = calibrate(tmp_path, data, "--median", "2", "--mahalanobis", "--strip", "8", model="digits_fp32")
    assert result.returncode == 0, result.stderr
    directory = tmp_path / "repo" / "mine"
    config = load_model_config(directory)
    assert config.detection.features_output
    assert [d["type"] for d in config.detection.detectors] == [
        "squeeze_median",
        "mahalanobis",
        "confidence_margin",
        "strip",
    ]
    assert (directory / "mahalanobis.npz").is_file() and (directory / "strip_references.npy").is_file()
    report = json.loads(result.stdout)
    assert report["calibration_fpr"] <= 0.05
    assert set(report["thresholds"]) == {"median_2x2", "mahalanobis", "confidence_margin", "strip"}


def test_replay_of_a_missing_video_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no.mp4"
    command = [sys.executable, "-m", "guard", "replay", str(missing), "--target", "127.0.0.1:1", "--model", "m"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stderr.strip() == f"guard replay: {missing}: no such video file"
