"""`guard calibrate --model DIR` on a camera-style model directory: JPEG requests, a [preprocess]
step, detectors for images; clean samples from a folder of images or a video file. The thresholds
land in the same config.toml, the references ship as encoded images, and the model serves."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import numpy as np
import tritonclient.grpc as triton

from guard.detection.calibration.fingerprint import foreign_host
from guard.detection.calibration.references import References
from guard.protocol.spec import TensorSpec
from guard.serving.model_config import load_model_config
from tests.conftest import ROOT, running_gateway
from tests.serving.helpers import write_config
from tests.serving.test_image_ingest import MEAN, SIZE, STD, bytes_input, encode, photo, small_cnn


def skeleton(root):
    """A model directory as a camera recipe writes it: contract, preprocessing, detectors, no thresholds."""
    directory = root / "cam"
    directory.mkdir(parents=True)
    small_cnn(directory / "model.onnx")
    write_config(
        root,
        {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": []}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [4]}],
            "preprocess": {"kind": "images", "height": SIZE, "width": SIZE, "mean": MEAN, "std": STD},
            "detectors": [
                {"name": "bit_depth_5", "type": "squeeze_bit_depth", "bits": 5},
                {"name": "median_2x2", "type": "squeeze_median", "size": 2},
                {"name": "patch", "type": "patch_occlusion"},
            ],
            "ensemble": {"method": "omnibus"},
        },
        "cam",
    )
    return directory


def test_calibrating_a_model_directory_from_a_folder_of_images(tmp_path):
    directory = skeleton(tmp_path / "repository")
    images = tmp_path / "clean"
    images.mkdir()
    for i in range(120):
        (images / f"{i:03d}.jpg").write_bytes(encode(photo(40 + i % 30, 50 + i % 20, i)))
    command = [sys.executable, "-m", "guard", "calibrate", "--model", str(directory), "--data", str(images)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_calibration"] + report["n_holdout"] == 120
    assert report["holdout_fpr"] <= report["holdout_fpr_upper_95"]
    table = tomllib.loads((directory / "config.toml").read_text())
    assert all(d["threshold"] == report["thresholds"][d["name"]] for d in table["detectors"])
    assert table["ensemble"]["threshold"] > 0 and table["calibration"]["fingerprint"] == report["fingerprint"]
    references = References.load(directory / "references.npz")
    assert references.inputs["image"].dtype == object and references.rows == report["n_calibration"]
    shipped = {bytes(b) for b in references.inputs["image"]}
    assert shipped <= {f.read_bytes() for f in images.iterdir()}  # the clean images themselves, as sent
    config = load_model_config(directory)
    with running_gateway(tmp_path / "repository") as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        result = client.infer("cam", [bytes_input([encode(photo(64, 64, 999))])])
        assert result.get_response().parameters["guard_verdict"].string_param in ("clean", "adversarial")
        # Calibrated right here: the stored thresholds hold, unless the suite runs as a foreign host.
        expected = "true" if foreign_host() else "false"
        assert srv.server._runtimes["cam"].host_calibration.recalibrated == expected
    assert config.preprocess.kind == "images"


def test_a_video_file_feeds_calibration_as_jpeg_frames(tmp_path):
    import av

    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(photo(48, 64, i), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    from guard.tools.clean_data import load_references

    directory = skeleton(tmp_path / "repository")
    references = load_references(video, load_model_config(directory, calibrated=False).inputs, stride=2)
    assert references.rows == 20 and references.inputs["image"][0][:2] == b"\xff\xd8"  # JPEG frames
    frames = load_references(video, (TensorSpec("frames", "UINT8", (-1, -1, 3)),), limit=5)
    assert frames.inputs["frames"].shape == (5, 48, 64, 3) and frames.inputs["frames"].dtype == np.uint8


def test_several_sources_are_several_cameras_for_per_camera_baselines(tmp_path):
    """`--data A B`: each folder is one camera; with [cameras.baseline] the warm-ups and the held-out
    frames are per camera, in time order, and the factory statistics land in the config."""
    directory = skeleton(tmp_path / "repository")
    table = tomllib.loads((directory / "config.toml").read_text())
    # A monitor among the per-camera detectors: the server's baselines take in its scores too, and the
    # held-out check must warm them up as the server will (it is never part of the verdict).
    table["cameras"] = {"baseline": {"warmup_frames": 10, "detectors": ["bit_depth_5", "patch", "median_2x2"]}}
    table["detectors"][1]["monitor"] = True
    write_config(tmp_path / "repository", table, "cam")
    sources = []
    for camera, (height, width) in enumerate([(40, 60), (70, 50)]):
        folder = tmp_path / f"camera{camera}"
        folder.mkdir()
        for i in range(40):
            (folder / f"{i:03d}.jpg").write_bytes(encode(photo(height, width, 100 * camera + i)))
        sources.append(str(folder))
    command = [sys.executable, "-m", "guard", "calibrate", "--model", str(directory), "--data", *sources]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cameras"] == 2 and report["n_calibration"] == 2 * 28  # each camera's last 30% held out
    assert report["n_holdout"] == 2 * 12 and report["holdout_fpr"] <= report["holdout_fpr_upper_95"]
    factory = tomllib.loads((directory / "config.toml").read_text())["cameras"]["baseline"]["factory"]
    assert set(factory) == {"bit_depth_5", "patch", "median_2x2"}
    assert all(len(entry) == 3 and entry[1] > 0 and entry[2] > 0 for entry in factory.values())
    references = References.load(directory / "references.npz")
    assert list(dict.fromkeys(references.cameras.tolist())) == ["camera0", "camera1"]
    with running_gateway(tmp_path / "repository") as srv:
        assert srv.server._runtimes["cam"].baselines is not None


def test_a_missing_data_source_is_one_line_naming_it(tmp_path):
    command = [sys.executable, "-m", "guard", "calibrate", "--model", str(tmp_path), "--data", str(tmp_path / "no.npz")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"guard calibrate: --data {tmp_path / 'no.npz'}: no such file or directory"
