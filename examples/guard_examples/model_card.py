"""MODEL_CARD.md for the `digits` demo classifier, written from the recipe's metrics."""

from __future__ import annotations

from pathlib import Path

# Wall-clock timing is left out on purpose so re-running the recipe reproduces the card exactly.


def _metric(metrics: dict, key: str, default: object = "n/a") -> object:
    return metrics.get(key, default)


def _sections(m: dict) -> dict[str, str]:
    n_total = m["n_train"] + m["n_calibration"] + m["n_test"]
    return {
        "Data": (
            f"scikit-learn `load_digits()`: {n_total} real 8x8 grayscale handwritten digits "
            "(pixel values 0..16), 10 classes."
        ),
        "Preprocessing": (
            "Divide by 16, then upsample bilinearly to 16x16 with "
            '`torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", '
            "align_corners=False)`. Model input: FP32 `[N, 1, 16, 16]` in [0, 1] "
            "(ONNX input `input`, output `logits` `[N, 10]`, dynamic batch axis)."
        ),
        "Split": (
            "Stratified by label with scikit-learn `train_test_split` (twice), split seed "
            f"`{_metric(m, 'split_seed')}`, fixed forever (`examples/guard_examples/digits_data.py`):\n\n"
            "| split | samples | use |\n|---|---|---|\n"
            f"| train | {m['n_train']} | training |\n"
            f"| calibration | {m['n_calibration']} | detector threshold calibration only |\n"
            f"| test | {m['n_test']} | held out: nothing trains or calibrates on it |"
        ),
        "Architecture": (
            "`DigitsNet` (`examples/guard_examples/digits_net.py`): conv(1->16, 3x3, pad 1)-ReLU-maxpool 2 -> "
            "conv(16->32, 3x3, pad 1)-ReLU-maxpool 2 -> flatten -> Linear(512, 64)-ReLU "
            "(penultimate 64-d features) -> Linear(64, 10) logits."
        ),
        "Training": (
            f"Adam, lr {_metric(m, 'lr')}, weight decay (L2) {_metric(m, 'weight_decay')}, "
            f"L1 {_metric(m, 'l1', 0.0)}, dropout {_metric(m, 'dropout', 0.0)}, "
            f"batch {_metric(m, 'batch_size')}, {m['epochs']} epochs, seed {m['seed']}, "
            "`torch.use_deterministic_algorithms(True)`, one intra-op CPU thread (bit-reproducible "
            "weights on a given CPU). Augmentation: random integer "
            f"shifts of up to {_metric(m, 'max_shift')} pixel (zero fill), seeded. "
            f"torch {m['torch_version']}."
        ),
        "Results": (
            f"- Held-out test accuracy: **{m['test_accuracy']:.4f}** ({m['n_test']} samples)\n"
            f"- Train accuracy: {m['train_accuracy']:.4f}\n"
            f"- ONNX model: `model.onnx`, {m['onnx_bytes']} bytes, opset 17\n"
            f"- Max |torch - ONNX Runtime (CPU)| logit difference on test: "
            f"{m['onnx_max_abs_diff']:.2g} (export fails above 1e-4)"
        ),
        "Reproduce": f"From the repository root:\n\n```\n{m['recipe']}\n```",
    }


def write_model_card(out_dir: Path, metrics: dict, extra_sections: dict[str, str] | None = None) -> Path:
    """Write `out_dir/MODEL_CARD.md`; `extra_sections` (title -> markdown) are appended in order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = _sections(metrics)
    sections.update(extra_sections or {})
    parts = [
        "# digits: demo handwritten-digit classifier\n",
        "Small CNN shipped with guard as the demo model; built by a seeded recipe.\n",
    ]
    parts += [f"## {title}\n\n{body.strip()}\n" for title, body in sections.items()]
    path = out_dir / "MODEL_CARD.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
