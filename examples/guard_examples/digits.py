"""Recipe for the shipped `digits` demo classifier: seeded training and ONNX export.

python -m guard_examples.digits --out examples/guard_examples/repository/digits [--epochs N] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from guard_examples.digits_data import SPLIT_SEED, load_split
from guard_examples.model_card import write_model_card
from guard_examples.onnx_export import export_onnx, torch_logits, verify_onnx
from guard_examples.paths import ARTIFACTS, WORKSPACE
from guard_examples.training import TrainOptions, fit

log = logging.getLogger(__name__)

REPO_ROOT = WORKSPACE
STATE_DICT_PATH = ARTIFACTS / "digits_fp32.pt"
DEFAULT_EPOCHS = TrainOptions.epochs
BATCH_SIZE = TrainOptions.batch_size
LR = TrainOptions.lr
MAX_SHIFT = TrainOptions.max_shift


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(torch_logits(model, x).argmax(axis=1) == y))


def train(options: TrainOptions, progress: bool = True) -> torch.nn.Module:
    x, y = load_split("train")
    return fit(x, y, options, progress=progress, desc="digits epochs")


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def train_and_export(
    out_dir: Path,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    weight_decay: float = 0.0,
    *,
    l1: float = 0.0,
    dropout: float = 0.0,
    state_dict_path: Path | None = STATE_DICT_PATH,
    progress: bool = True,
) -> dict:
    """Train DigitsNet, save its state_dict, export `out_dir/model.onnx`, verify it; return metrics."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    options = TrainOptions(epochs=epochs, seed=seed, weight_decay=weight_decay, l1=l1, dropout=dropout)
    model = train(options, progress=progress)
    train_seconds = time.perf_counter() - start
    if state_dict_path is not None:
        state_dict_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), state_dict_path)

    x_train, y_train = load_split("train")
    x_cal, _ = load_split("calibration")
    x_test, y_test = load_split("test")
    onnx_path = export_onnx(model, torch.from_numpy(np.array(x_test[:1])), out_dir / "model.onnx")
    diff = verify_onnx(model, onnx_path, x_test)
    return {
        "train_accuracy": accuracy(model, x_train, y_train),
        "test_accuracy": accuracy(model, x_test, y_test),
        "n_train": len(x_train),
        "n_calibration": len(x_cal),
        "n_test": len(x_test),
        "seed": seed,
        "split_seed": SPLIT_SEED,
        "epochs": epochs,
        "weight_decay": weight_decay,
        "l1": l1,
        "dropout": dropout,
        "batch_size": BATCH_SIZE,
        "lr": LR,
        "max_shift": MAX_SHIFT,
        "onnx_path": str(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_max_abs_diff": diff,
        "state_dict_path": None if state_dict_path is None else str(state_dict_path),
        "train_seconds": train_seconds,
        "torch_version": torch.__version__,
        "recipe": (
            f"python -m guard_examples.digits --out {_display_path(out_dir)} --epochs {epochs}"
            f" --seed {seed} --weight-decay {weight_decay:g} --l1 {l1:g} --dropout {dropout:g}"
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty")
    parser.add_argument("--l1", type=float, default=0.0, help="L1 penalty on the weights")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout before the last layer")
    parser.add_argument("--state-dict", type=Path, default=STATE_DICT_PATH, help="where to save the torch weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    metrics = train_and_export(
        args.out,
        args.epochs,
        args.seed,
        args.weight_decay,
        l1=args.l1,
        dropout=args.dropout,
        state_dict_path=args.state_dict,
    )
    from guard_examples.digits_guard import calibrate_demo, squeezer_table

    report, calibration_text = calibrate_demo(args.out)
    from guard_examples.attacks import robust_section
    from guard_examples.cards import size_and_latency
    from guard_examples.digits_net import load_digits_net

    model = load_digits_net(args.state_dict)
    x_test, y_test = load_split("test")
    write_model_card(
        args.out,
        metrics,
        {
            "Robust accuracy": robust_section(model, torch.from_numpy(np.array(x_test)), torch.from_numpy(y_test)),
            "Size and latency": size_and_latency(args.out / "model.onnx"),
            "Squeezer choice": squeezer_table(args.out / "model.onnx"),
            "Guard calibration": calibration_text,
        },
    )
    log.info("held-out clean flag rate %.4f (target %.2f)", report["holdout_fpr"], report["target_fpr"])
    log.info(
        "held-out test accuracy %.4f (train %.4f) in %.1fs; %s is %d bytes, max |torch-ort| %.2g",
        metrics["test_accuracy"],
        metrics["train_accuracy"],
        metrics["train_seconds"],
        metrics["onnx_path"],
        metrics["onnx_bytes"],
        metrics["onnx_max_abs_diff"],
    )


if __name__ == "__main__":
    main()
