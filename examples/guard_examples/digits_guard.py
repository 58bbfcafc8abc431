"""Brings the freshly trained `digits` model under the guard: squeezer evidence and calibration.

The demo's squeezers are chosen on the calibration split (never the test split): the paper's
MNIST choice of 1-bit depth costs clean accuracy on these 17-level upsampled digits, so the demo
uses 2 bits with the paper's 2x2 median filter. The table this module writes into the model card
is the evidence for that choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from guard.api import calibrate_model, squeezers
from guard_examples.digits_data import load_split
from guard_examples.paths import REPOSITORY

DEMO_SQUEEZERS = [
    {"name": "bit_depth_2", "type": "squeeze_bit_depth", "bits": 2},
    {"name": "median_2x2", "type": "squeeze_median", "size": 2},
]
# Feature-space detectors see what squeezing misses (docs/detection.md); the Mahalanobis
# statistics are fitted on the clean TRAIN split, the thresholds on the calibration split. The
# confidence margin catches what stops at the decision boundary (CW, DeepFool).
FEATURE_DETECTORS = [
    {"name": "mahalanobis", "type": "mahalanobis"},
    {"name": "confidence_margin", "type": "confidence_margin"},
]
# Fisher's combination, chosen over the union on attacks against TRAIN-split images (never the
# test split): docs/detection.md.
ENSEMBLE = "omnibus"
NETWORK = {"name": "detector_net", "type": "detector_network"}


def demo_detectors(model_dir: Path) -> list[dict]:
    """The demo's detectors; the detector network joins once its weights were trained
    (`python -m guard_examples.detector_net`) into the model directory."""
    network = [NETWORK] if (model_dir / "detector_net.npz").is_file() else []
    return DEMO_SQUEEZERS + FEATURE_DETECTORS + network


CANDIDATES = [("bit depth", b, lambda x, b=b: squeezers.bit_depth(x, b)) for b in (1, 2, 3, 4, 5)] + [
    ("median", s, lambda x, s=s: squeezers.median(x, s)) for s in (2, 3)
]


def squeezer_table(model_path: Path) -> str:
    """Clean accuracy on the calibration split under each candidate squeezer (Markdown)."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x, y = load_split("calibration")
    tensor = torch.from_numpy(np.array(x))

    def accuracy(batch: np.ndarray) -> float:
        return float((session.run(["logits"], {"input": np.ascontiguousarray(batch)})[0].argmax(1) == y).mean())

    rows = [f"| none | | {accuracy(x):.4f} |"]
    rows += [f"| {kind} | {param} | {accuracy(fn(tensor).numpy()):.4f} |" for kind, param, fn in CANDIDATES]
    return (
        "Clean accuracy on the calibration split under each candidate squeezer; the demo uses "
        "`" + "`, `".join(d["name"] for d in DEMO_SQUEEZERS) + "`.\n\n"
        "| squeezer | parameter | accuracy |\n|---|---|---|\n" + "\n".join(rows)
    )


def calibrate_demo(out_dir: Path, target_fpr: float = 0.05) -> tuple[dict, str]:
    """Calibrate thresholds on the calibration split, report on the test split; (report, card text)."""
    x_cal, y_cal = load_split("calibration")
    x_test, y_test = load_split("test")
    report = calibrate_model(
        out_dir / "model.onnx",
        out_dir.name,
        out_dir.parent,
        x_cal,
        y_cal,
        target_fpr=target_fpr,
        holdout=(x_test, y_test),
        detectors=demo_detectors(out_dir),
        fit_data=load_split("train"),
        policy="flag",
        batching={"max_batch_size": 32, "max_queue_delay_microseconds": 0, "max_queue_size": 1024},
        backend={"intra_op_threads": 1, "inter_op_threads": 1},
        ensemble=ENSEMBLE,
    )
    lines = [
        f"Thresholds set by `guard calibrate` logic on the {report['n_calibration']} calibration "
        f"samples for a target false-positive rate of {target_fpr:.0%} held with confidence "
        f"{report['confidence']:g} (see `docs/detection.md`); detectors that learn clean statistics were "
        "fitted on the train split. The calibration samples ship as `references.npz`: a host whose "
        f"runtime fingerprint differs from `{report['fingerprint']}` (the one these were derived under) "
        "derives the thresholds again from them when it loads the model.",
        "",
        "| detector | threshold | clean flag rate (calibration) | clean flag rate (test) |",
        "|---|---|---|---|",
    ]
    for name, threshold in report["thresholds"].items():
        lines.append(
            f"| {name} | {threshold:.4f} | {report['calibration_fpr_per_detector'][name]:.4f} | "
            f"{report['holdout_fpr_per_detector'][name]:.4f} |"
        )
    method = report["ensemble"]["method"]
    combined = (
        "Any detector"
        if method == "union"
        else f"The {method} combination of the detectors' p-values (docs/detection.md; thresholds "
        + ", ".join(f"{k} {v:.3f}" for k, v in report["ensemble"].items() if "threshold" in k)
        + "; the per-detector thresholds above are each at the target alone and only name who fired)"
    )
    lines += [
        "",
        f"{combined}: {report['calibration_fpr']:.4f} on calibration, "
        f"**{report['holdout_fpr']:.4f}** on the {report['n_holdout']} held-out test samples (95% upper "
        f"bound {report['holdout_fpr_upper_95']:.4f}).",
    ]
    return report, "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Calibrate already built demo models again (no retraining): `python -m guard_examples.digits_guard`."""
    import argparse
    import logging

    from guard_examples.cards import replace_section

    root = REPOSITORY
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--model-dir",
        type=Path,
        action="append",
        help="a built model directory (default: examples/guard_examples/repository/digits and digits_fp32)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for model_dir in args.model_dir or [root / "digits", root / "digits_fp32"]:
        report, text = calibrate_demo(model_dir)
        replace_section(model_dir, "Guard calibration", text)
        logging.getLogger("guard_examples.digits_guard").info(
            "%s: held-out clean flag rate %.4f (upper %.4f)",
            model_dir.name,
            report["holdout_fpr"],
            report["holdout_fpr_upper_95"],
        )


if __name__ == "__main__":
    main()
