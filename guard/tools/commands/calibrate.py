"""`guard calibrate`: bring an ONNX classifier, or a model directory of any kind, under the guard."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from guard.serving.policy import POLICIES


def add(commands) -> None:
    cal = commands.add_parser("calibrate", help="bring an ONNX classifier under the guard")
    cal.add_argument("--onnx", type=Path, help="a classifier to bring in (outputs logits first)")
    cal.add_argument("--name", help="model name (directory under the repository)")
    cal.add_argument("--repository", type=Path)
    cal.add_argument(
        "--model",
        type=Path,
        help="instead: calibrate this model directory as its config.toml describes it (any input and output kind)",
    )
    cal.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="clean samples: .npz ('x', optional labels "
        "'y'; with --model, one array per input), or with --model a folder of images or a video file; "
        "with --model, several: one per camera (per-camera baselines warm up on each)",
    )
    cal.add_argument("--frames", type=int, help="with a video or an image folder: use at most this many")
    cal.add_argument("--stride", type=int, default=1, help="with a video: keep every STRIDE-th frame")
    cal.add_argument("--target-fpr", type=float, default=0.05)
    cal.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="probability that the clean flag rate on new inputs stays at most the target (default 0.9)",
    )
    cal.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.3,
        help="share of the samples kept out of calibration to report the clean flag rate",
    )
    cal.add_argument("--range", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"))
    cal.add_argument("--policy", choices=POLICIES)
    cal.add_argument(
        "--bit-depth",
        type=int,
        action="append",
        metavar="BITS",
        help="a bit-depth squeezer (repeatable; default: 5 bits and a 2x2 median)",
    )
    cal.add_argument(
        "--median", type=int, action="append", metavar="SIZE", help="a SIZExSIZE median-filter squeezer (repeatable)"
    )
    cal.add_argument(
        "--mahalanobis",
        action=argparse.BooleanOptionalAction,
        help="the feature-space (Mahalanobis) detector (default: on when the model has a linear head)",
    )
    cal.add_argument(
        "--confidence-margin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the low-confidence detector, 1 - gap between the top two probabilities (default: on)",
    )
    cal.add_argument("--strip", type=int, metavar="N", help="add STRIP trigger detection with N blends (opt-in)")
    cal.add_argument("--features", help="the tensor feature detectors read (default: the last layer's input)")
    cal.add_argument(
        "--ensemble",
        choices=("omnibus", "fisher", "union"),
        default="omnibus",
        help="how detectors combine (docs/detection.md; default omnibus)",
    )
    cal.add_argument(
        "--folds", type=int, default=5, help="cross-fitting folds for detectors that learn from the samples (default 5)"
    )
    cal.add_argument("--seed", type=int, default=0)
    cal.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    missing = [str(p) for p in args.data if not p.exists()]
    if missing:
        raise SystemExit(f"guard calibrate: --data {missing[0]}: no such file or directory")
    if len(args.data) > 1 and args.model is None:
        raise SystemExit("guard calibrate: several --data sources (one per camera) need --model DIR")
    if args.model is not None:  # a model directory whose config says what it is (camera models)
        from guard.serving.model_config import load_model_config
        from guard.tools.calibrate_dir import calibrate_directory
        from guard.tools.clean_data import load_cameras

        samples = load_cameras(
            args.data, load_model_config(args.model, calibrated=False).inputs, stride=args.stride, limit=args.frames
        )
        report = calibrate_directory(
            args.model,
            samples,
            holdout_fraction=args.holdout_fraction,
            folds=args.folds,
            seed=args.seed,
            confidence=args.confidence,
        )
    else:
        from guard.tools.calibrate import calibrate_model, detector_tables

        if args.onnx is None or args.name is None or args.repository is None:
            raise SystemExit("guard calibrate: --onnx, --name and --repository (or --model DIR)")
        with np.load(args.data[0]) as data:
            if "x" not in data:
                raise SystemExit(f"{args.data[0]}: expected an array named 'x' (and optionally 'y')")
            x, y = data["x"], data.get("y")
        tables = detector_tables(
            args.onnx,
            bit_depths=args.bit_depth,
            medians=args.median,
            mahalanobis=args.mahalanobis,
            confidence_margin=args.confidence_margin,
            strip=args.strip,
            features=args.features,
        )
        report = calibrate_model(
            args.onnx,
            args.name,
            args.repository,
            x,
            y,
            target_fpr=args.target_fpr,
            confidence=args.confidence,
            holdout_fraction=args.holdout_fraction,
            seed=args.seed,
            value_range=tuple(args.range),
            policy=args.policy or "flag",
            detectors=tables,
            features=args.features,
            ensemble=args.ensemble,
            folds=args.folds,
        )
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0
