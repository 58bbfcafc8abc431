"""Per-camera baselines through a live gateway: a model calibrated on several cameras (one scene
each), then a camera whose scene the calibrated thresholds flag on sight; after its warm-up it is
judged against its own scene, noise on it is still flagged, and the metrics say how it drifts.

The digits demo stands in for cameras: a "scene" is a contrast change of the digits (fog: half
the contrast on a grey floor). Calibration frames come from the training split, judged frames
from the held-out split, so nothing judged was calibrated on. Every rate is measured here."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.grpc as triton
from scipy.stats import binom

from guard.detection.calibration.references import References
from guard.tools.calibrate_dir import calibrate_directory
from tests.conftest import copy_demo, demo_detector_names, running_gateway
from tests.serving.helpers import edit_config, infer_input

WARMUP = 30
# (contrast, floor) of each calibration camera's scene.
SCENES = [(1.0, 0.0), (0.7, 0.0), (0.5, 0.25), (0.8, 0.1), (0.6, 0.0), (0.9, 0.05)]
FOG = (0.5, 0.25)


def scene(x: np.ndarray, contrast: float, floor: float) -> np.ndarray:
    return np.ascontiguousarray(x * contrast + floor, dtype=np.float32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    from tests.conftest import demo_split as load_split

    repository = copy_demo(tmp_path_factory.mktemp("baselines"))
    shutil.rmtree(repository / "digits_fp32")

    def change(table):
        # On digits a contrast change moves every detector's scores, the squeezers' too: all are
        # judged per camera (on camera footage the default, the feature readers, is the choice).
        table["cameras"] = {
            "per_camera_metrics": True,
            "baseline": {"warmup_frames": WARMUP, "detectors": demo_detector_names()},
        }

    edit_config(repository, change)
    x, y = load_split("train")
    per = len(x) // len(SCENES)
    frames = np.concatenate([scene(x[i * per : (i + 1) * per], *s) for i, s in enumerate(SCENES)])
    cameras = np.repeat([f"calibration-{i}" for i in range(len(SCENES))], per)
    report = calibrate_directory(repository / "digits", References({"input": frames}, y[: len(frames)], cameras))
    assert report["cameras"] == len(SCENES)
    return repository


def flags(client, x: np.ndarray, camera: str | None) -> np.ndarray:
    parameters = {"camera_id": camera} if camera else {}
    return np.array(
        [
            client.infer("digits", [infer_input(x[i : i + 1])], parameters=parameters)
            .get_response()
            .parameters["guard_verdict"]
            .string_param
            != "clean"
            for i in range(len(x))
        ]
    )


def test_a_camera_is_judged_against_its_own_scene_after_its_warm_up(repository, held_out):
    x = scene(held_out[0], *FOG)
    judged = x[WARMUP:]
    bound = binom.isf(1e-6, len(judged), 0.05) / len(judged)  # a 5% rate exceeds it once in a million runs
    noise = np.random.default_rng(0).random((20, 1, 16, 16), dtype=np.float32)
    with running_gateway(repository) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        unbased = flags(client, judged, None).mean()
        flags(client, x[:WARMUP], "fog")
        based = flags(client, judged, "fog").mean()
        noise_flagged = flags(client, noise, "fog").mean()
        registry = srv.server.metrics.registry
        warm = registry.get_sample_value("guard_cameras_baseline_warm", {"model": "digits"})
        rate = registry.get_sample_value("guard_camera_flag_rate", {"model": "digits", "camera": "fog"})
        drift = registry.get_sample_value("guard_camera_baseline_drift", {"model": "digits", "camera": "fog"})
        camera = srv.server._runtimes["digits"].baselines.camera("fog")
    assert unbased > 3 * bound, f"the premise: the calibrated thresholds flag this scene ({unbased:.2f})"
    assert based <= bound, f"{based:.3f} of the fog camera's frames flagged after its warm-up"
    assert noise_flagged >= 0.8  # what is not the scene is still seen
    assert warm == 1.0 and camera.warm
    assert rate == pytest.approx(camera.flag_rate()) and 0 < rate < 1
    assert drift == pytest.approx(camera.drift())


def test_a_baseline_needs_its_factory_statistics(repository, tmp_path):
    from guard.protocol.errors import ConfigError

    copy = tmp_path / "repository"
    shutil.copytree(repository, copy)
    edit_config(copy, lambda t: t["cameras"]["baseline"].pop("factory"))
    with pytest.raises(ConfigError) as info, running_gateway(copy, calibration="trust"):
        pass
    assert info.value.key == "cameras.baseline.factory" and "guard calibrate" in info.value.message
