"""guard as a user gets it: a wheel installed into a fresh virtualenv outside the checkout.

The import-linter contract says the library never imports the checkout's examples (`guard_examples`),
`benchmarks` or `tests`; this test is what that contract is for. The wheel is built from a copy
of the project's packaging files (so the checkout gets no build/ or egg-info), installed with
--no-deps into a venv in tmp_path, and run from a working directory outside the checkout.

The venv borrows the project venv's third-party packages (torch, onnxruntime, grpc, ...) through
a .pth file naming its site-packages: a directory listed in a .pth is appended to sys.path, but
the .pth files INSIDE it are not processed, so the project's editable-install hook (which would
put the checkout's `guard` on the path) stays off. test_the_installed_guard_is_the_wheels checks
exactly that. No network: setuptools comes from the project venv (--no-build-isolation), and
pip installs the local wheel only (--no-index).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.wheel import install_wheel, run, user_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv (outside the checkout) with the guard wheel installed; its directory."""
    return install_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_installed_guard_is_the_wheels(installed, tmp_path):
    probe = (
        "import importlib.util, json, sys, guard, torch, onnxruntime, grpc\n"
        "print(json.dumps({'guard': guard.__file__, 'path': sys.path, 'modules': sorted(sys.modules),\n"
        "                  'examples': importlib.util.find_spec('guard_examples') is not None}))"
    )
    seen = json.loads(run([installed / "bin" / "python", "-c", probe], cwd=tmp_path).stdout)
    assert Path(seen["guard"]).is_relative_to(installed), seen["guard"]
    assert not any(
        p and Path(p).resolve().is_relative_to(ROOT) and not Path(p).resolve().is_relative_to(ROOT / ".venv")
        for p in seen["path"]
    ), seen["path"]  # the checkout itself is not on the path
    # The project venv's .pth files (the editable install's finder among them) were not run.
    assert not [m for m in seen["modules"] if m.startswith("__editable__")]
    assert not seen["examples"]  # so the demo recipes cannot be imported, as on a user's machine


def test_installed_guard_serves_a_repository(installed, tmp_path, held_out):
    import tritonclient.grpc as triton

    repository = tmp_path / "repository"
    shutil.copytree(ROOT / "examples" / "guard_examples" / "repository", repository)
    process = subprocess.Popen(
        [installed / "bin" / "guard", "serve", "--repository", repository, "--grpc-port", "0", "--metrics-port", "0"],
        cwd=tmp_path,
        env=user_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, ready, lines = time.monotonic() + 120, None, []
        while time.monotonic() < deadline and ready is None:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            ready = re.search(r"guard ready: grpc=([\d.]+):(\d+)", line)
        assert ready, "".join(lines)
        with triton.InferenceServerClient(f"{ready.group(1)}:{ready.group(2)}") as client:
            tensor = triton.InferInput("input", [2, 1, 16, 16], "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(held_out[0][:2]))
            result = client.infer("digits", [tensor])
            assert result.as_numpy("logits").shape == (2, 10)
            assert result.get_response().parameters["guard_verdict"].string_param
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_installed_guard_calibrates_and_audits_from_files(installed, tmp_path):
    from guard.serving.model_config import load_model_config
    from tests.conftest import DEMO_DATA

    clean = DEMO_DATA / "calibration.npz"
    result = run(
        [
            installed / "bin" / "guard",
            "calibrate",
            "--onnx",
            ROOT / "examples" / "guard_examples" / "repository" / "digits_fp32" / "model.onnx",
            "--name",
            "mine",
            "--repository",
            tmp_path / "repo",
            "--data",
            clean,
        ],
        cwd=tmp_path,
    )
    report = json.loads(result.stdout)
    assert report["holdout_accuracy"] > 0.9
    config = load_model_config(tmp_path / "repo" / "mine")
    assert config.model_file.is_file() and config.detection.detectors
    # A scan reads its samples from the file it is given, nothing from a checkout.
    test = tmp_path / "test.npz"
    with np.load(DEMO_DATA / "test.npz") as data:
        np.savez(test, x=data["x"][:48], y=data["y"][:48])
    run(
        [
            installed / "bin" / "guard",
            "audit",
            "--model",
            tmp_path / "repo" / "mine",
            "--data",
            test,
            "--out",
            tmp_path / "audit",
            "--no-progress",
        ],
        cwd=tmp_path,
    )
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["samples"] == 48 and {r["family"] for r in audit["results"]} >= {"clean", "pgd"}
