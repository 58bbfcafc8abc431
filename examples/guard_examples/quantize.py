"""INT8 and FP16 variants of the digits model, and the shipped INT8 `digits` entry.

    python -m guard_examples.quantize [--fp32 DIR] [--out DIR]   (default: the demo's digits_fp32 and digits)
                              [--fp16-out examples/guard_examples/zoo/digits_fp16] [--calibration-images 320]

INT8: ONNX Runtime static quantization in QDQ format (runs on the CPU provider and is what
TensorRT expects), per-channel signed INT8 weights, unsigned INT8 activations, activation ranges
calibrated on real TRAINING images (never the calibration or test split). The guard's detector
thresholds are then calibrated on the INT8 model itself, since its logits are what the detectors see.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from guard_examples.cards import size_and_latency, write_card
from guard_examples.digits_data import load_split
from guard_examples.paths import REPOSITORY, WORKSPACE, ZOO

log = logging.getLogger("guard_examples.quantize")
REPO_ROOT = WORKSPACE
NOISE_SIGMAS = (0.02, 0.05, 0.1)
ACCURACY_GATE = 0.01  # INT8 top-1 may trail FP32 by at most one point on the held-out split


class _Images(CalibrationDataReader):
    def __init__(self, x: np.ndarray, batch: int = 32):
        self._batches = iter([{"input": np.ascontiguousarray(x[i : i + batch])} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._batches, None)


def calibration_images(count: int, seed: int = 0) -> np.ndarray:
    """`count` training images, seeded: activation ranges come from data the model trained on."""
    x, _ = load_split("train")
    return np.asarray(x)[np.sort(np.random.default_rng(seed).choice(len(x), size=count, replace=False))]


def quantize_int8(fp32: Path, out: Path, images: np.ndarray) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            _Images(images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    return out


def convert_fp16(fp32: Path, out: Path) -> Path:
    """FP16 weights and compute, FP32 input and output (so clients and the guard see no change)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def compare(fp32: Path, variant: Path, seed: int = 0) -> dict:
    """Accuracy of both on the held-out split, and how often their predictions disagree on it and
    on the same inputs with small Gaussian noise (a stability view of the weight change)."""
    x, y = load_split("test")
    base, other = logits(fp32, x).argmax(1), logits(variant, x).argmax(1)
    report = {
        "fp32_accuracy": float((base == y).mean()),
        "accuracy": float((other == y).mean()),
        "disagreement": float((base != other).mean()),
        "noise": {},
    }
    rng = np.random.default_rng(seed)
    for sigma in NOISE_SIGMAS:
        noisy = np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0).astype(np.float32)
        b, o = logits(fp32, noisy).argmax(1), logits(variant, noisy).argmax(1)
        report["noise"][str(sigma)] = {
            "fp32_accuracy": float((b == y).mean()),
            "accuracy": float((o == y).mean()),
            "disagreement": float((b != o).mean()),
        }
    return report


def comparison_table(name: str, report: dict) -> str:
    rows = [f"| clean | {report['fp32_accuracy']:.4f} | {report['accuracy']:.4f} | {report['disagreement']:.4f} |"]
    rows += [
        f"| Gaussian sigma {s} | {r['fp32_accuracy']:.4f} | {r['accuracy']:.4f} | {r['disagreement']:.4f} |"
        for s, r in report["noise"].items()
    ]
    return (
        f"Held-out test split (360 samples). Disagreement: share of inputs where {name} and FP32 predict "
        f"different classes.\n\n| inputs | FP32 accuracy | {name} accuracy | disagreement |\n|---|---|---|---|\n"
        + "\n".join(rows)
    )


def _transfer_robustness(onnx_path: Path) -> str:
    import torch

    from guard_examples.attacks import robust_section
    from guard_examples.digits_net import load_digits_net

    model = load_digits_net()
    x, y = load_split("test")
    return robust_section(model, torch.from_numpy(np.array(x)), torch.from_numpy(y), onnx_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, default=REPOSITORY / "digits_fp32")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "digits")
    parser.add_argument("--fp16-out", type=Path, default=ZOO / "digits_fp16")
    parser.add_argument("--calibration-images", type=int, default=320)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from guard_examples.digits_guard import calibrate_demo

    fp32 = args.fp32 / "model.onnx"
    args.out.mkdir(parents=True, exist_ok=True)
    int8 = quantize_int8(fp32, args.out / "model.onnx", calibration_images(args.calibration_images))
    int8_report = compare(fp32, int8)
    if int8_report["accuracy"] < int8_report["fp32_accuracy"] - ACCURACY_GATE:
        raise SystemExit(
            f"INT8 accuracy {int8_report['accuracy']:.4f} fails the gate "
            f"(FP32 {int8_report['fp32_accuracy']:.4f} - {ACCURACY_GATE})"
        )
    calibration, calibration_text = calibrate_demo(args.out)
    fp16 = convert_fp16(fp32, args.fp16_out / "model.onnx")
    fp16_report = compare(fp32, fp16)
    (args.out / "quantization.json").write_text(json.dumps({"int8": int8_report, "fp16": fp16_report}, indent=2) + "\n")
    command = (
        "python -m guard_examples.quantize" if argv is None else "python -m guard_examples.quantize " + " ".join(argv)
    )
    common = {
        "Source": f"`{args.fp32.relative_to(REPO_ROOT) if args.fp32.is_relative_to(REPO_ROOT) else args.fp32}"
        "/model.onnx`, the FP32 `digits` model (see its MODEL_CARD.md for training).",
    }
    write_card(
        args.out,
        "digits (INT8): the shipped demo model",
        (
            "The FP32 digits CNN quantized to INT8 with ONNX Runtime static quantization, QDQ format "
            f"(per-channel INT8 weights, UINT8 activations, ranges calibrated on {args.calibration_images} "
            "seeded training images). This is what `guard serve` protects by default; `digits_fp32` stays "
            "in the repository for comparison."
        ),
        {
            **common,
            "Accuracy and stability": comparison_table("INT8", int8_report)
            + f"\n\nGate: INT8 top-1 within {ACCURACY_GATE:.0%} of FP32 on the held-out split (enforced by "
            "the recipe and by `examples/tests/test_quantization.py`).",
            "Robust accuracy": _transfer_robustness(int8),
            "Size and latency": size_and_latency(int8) + "\n\nFP32 for comparison: " + size_and_latency(fp32),
            "Guard calibration": calibration_text,
            "Reproduce": f"From the repository root, after `python -m guard_examples.digits --out "
            "examples/guard_examples/repository/digits_fp32`:"
            f"\n\n```\n{command}\n```",
        },
    )
    write_card(
        args.fp16_out,
        "digits (FP16)",
        (
            "The FP32 digits CNN with FP16 weights and compute (FP32 input and output kept), converted with "
            "onnxruntime.transformers.float16. Mainly for GPU execution providers; on CPU, ONNX Runtime "
            "casts around operators without FP16 kernels."
        ),
        {
            **common,
            "Accuracy and stability": comparison_table("FP16", fp16_report),
            "Robust accuracy": _transfer_robustness(fp16),
            "Size and latency": size_and_latency(fp16),
            "Reproduce": f"```\n{command}\n```",
        },
    )
    log.info(
        "INT8 accuracy %.4f (FP32 %.4f), disagreement %.4f; FP16 accuracy %.4f; held-out flag rate %.4f",
        int8_report["accuracy"],
        int8_report["fp32_accuracy"],
        int8_report["disagreement"],
        fp16_report["accuracy"],
        calibration["holdout_fpr"],
    )


if __name__ == "__main__":
    main()
