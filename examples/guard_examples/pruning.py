"""Recipe: global magnitude pruning of the standard digits model, fine-tuned with its masks kept.

    python -m guard_examples.pruning [--out DIR] [--sparsities 0.5 0.7 0.9 0.95] [--finetune-epochs N ...]

The fine-tuning length is chosen per sparsity on the calibration split (the candidate with the best
calibration accuracy, fewest epochs on ties); the test split is only reported.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from guard_examples.cards import size_and_latency, write_card
from guard_examples.digits import STATE_DICT_PATH, accuracy
from guard_examples.digits_data import load_split
from guard_examples.digits_net import DigitsNet, load_digits_net
from guard_examples.onnx_export import export_onnx, verify_onnx
from guard_examples.paths import ZOO
from guard_examples.training import TrainOptions, fit

log = logging.getLogger(__name__)

SPARSITIES = (0.5, 0.7, 0.9, 0.95)
FINETUNE_CANDIDATES = (5, 10, 20, 40)
"""Fine-tuning epochs tried per sparsity (always under the standard 100); adding 0 lets calibration skip it."""


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_global(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the `sparsity` fraction of smallest-|w| Conv2d/Linear weights, ranked across all layers.

    In place; the masks stay attached (weight = weight_orig * weight_mask) so fine-tuning keeps the
    pruned weights at zero. Biases are not pruned. Call `make_permanent` before exporting.
    """
    prune.global_unstructured(_prunable(model), pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold the masks into plain weights (prune.remove), so state_dict and ONNX hold no masks."""
    for module, name in _prunable(model):
        if prune.is_pruned(module):
            prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the Conv2d/Linear weights (masked or permanent)."""
    weights = [getattr(m, n).detach() for m, n in _prunable(model)]
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


def nonzero_parameters(model: nn.Module) -> tuple[int, int]:
    """(nonzero, total) over all parameters, biases included; call after make_permanent."""
    params = list(model.parameters())
    return sum(int((p != 0).sum()) for p in params), sum(p.numel() for p in params)


def load_standard(path: Path = STATE_DICT_PATH) -> DigitsNet:
    return load_digits_net(path)


def prune_and_finetune(
    standard: nn.Module, target: float, epochs: tuple[int, ...] = FINETUNE_CANDIDATES, progress: bool = True
) -> tuple[nn.Module, dict]:
    """Prune a copy of `standard`, fine-tune for each candidate length, keep the best on calibration."""
    x_train, y_train = load_split("train")
    x_cal, y_cal = load_split("calibration")
    pruned = prune_global(copy.deepcopy(standard), target).eval()
    tried = {0: accuracy(pruned, x_cal, y_cal)}  # always recorded: what fine-tuning has to beat
    best, best_epochs, best_cal = (pruned, 0, tried[0]) if 0 in epochs else (None, -1, -1.0)
    for n in sorted(e for e in epochs if e > 0):
        tuned = fit(
            x_train,
            y_train,
            TrainOptions(epochs=n),
            model=copy.deepcopy(pruned),
            progress=progress,
            desc=f"fine-tune {target:.0%} x{n}",
        )
        tried[n] = accuracy(tuned, x_cal, y_cal)
        if tried[n] > best_cal:  # strict: ties keep the shorter fine-tune
            best, best_epochs, best_cal = tuned, n, tried[n]
    info = {"pruned_only": pruned, "finetune_epochs": best_epochs, "calibration_accuracy_by_epochs": tried}
    return make_permanent(best), info


def gzip_size(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def run(
    out: Path,
    sparsities: tuple[float, ...] = SPARSITIES,
    epochs: tuple[int, ...] = FINETUNE_CANDIDATES,
    progress: bool = True,
    command: str = "python -m guard_examples.pruning",
) -> dict:
    """Prune, fine-tune, export and document every sparsity; write pruning.json and pruning.md."""
    start = time.perf_counter()
    standard = load_standard()
    x_test, y_test = load_split("test")
    example = torch.from_numpy(np.array(x_test[:1]))
    scratch = tempfile.TemporaryDirectory()  # the dense baseline's ONNX is measured, not shipped
    dense_path = export_onnx(standard, example, Path(scratch.name) / "model.onnx")
    rows = [
        {
            "sparsity_requested": 0.0,
            "sparsity_achieved": sparsity(standard),
            "finetune_epochs": 0,
            "test_accuracy_before_finetune": accuracy(standard, x_test, y_test),
            "test_accuracy": accuracy(standard, x_test, y_test),
            "nonzero_parameters": nonzero_parameters(standard)[0],
            "total_parameters": nonzero_parameters(standard)[1],
            "onnx_bytes": dense_path.stat().st_size,
            "onnx_gzip_bytes": gzip_size(dense_path),
            "onnx": None,
        }
    ]
    scratch.cleanup()
    for target in sparsities:
        model, info = prune_and_finetune(standard, target, epochs, progress)
        achieved = sparsity(model)
        n_weights = sum(getattr(m, n).numel() for m, n in _prunable(model))
        if abs(achieved - target) > 1 / n_weights:  # global_unstructured rounds to a whole weight count
            raise RuntimeError(f"sparsity {achieved:.4f} != requested {target}")
        directory = out / f"digits_pruned_{round(target * 100)}"
        onnx_path = export_onnx(model, example, directory / "model.onnx")
        diff = verify_onnx(model, onnx_path, x_test)
        nonzero, total = nonzero_parameters(model)
        row = {
            "sparsity_requested": target,
            "sparsity_achieved": achieved,
            "finetune_epochs": info["finetune_epochs"],
            "calibration_accuracy_by_epochs": info["calibration_accuracy_by_epochs"],
            "test_accuracy_before_finetune": accuracy(info["pruned_only"], x_test, y_test),
            "test_accuracy": accuracy(model, x_test, y_test),
            "nonzero_parameters": nonzero,
            "total_parameters": total,
            "onnx_bytes": onnx_path.stat().st_size,
            "onnx_gzip_bytes": gzip_size(onnx_path),
            "onnx_max_abs_diff": diff,
            "onnx": str(onnx_path.relative_to(out)),
        }
        rows.append(row)
        _card(directory, row, onnx_path, command)
        log.info(
            "sparsity %.2f: test %.4f -> %.4f after %d epochs, gzip %d bytes",
            target,
            row["test_accuracy_before_finetune"],
            row["test_accuracy"],
            row["finetune_epochs"],
            row["onnx_gzip_bytes"],
        )
    result = {
        "command": command,
        "source": "examples/guard_examples/artifacts/digits_fp32.pt",
        "split": "test",
        "n_test": len(x_test),
        "candidates_finetune_epochs": list(epochs),
        "rows": rows,
    }
    # Timings stay out of the committed files so a rerun reproduces them exactly.
    (out / "pruning.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "pruning.md").write_text("# Global magnitude pruning of `digits`\n\n" + table(rows) + "\n", encoding="utf-8")
    return {**result, "wall_seconds": time.perf_counter() - start}


def table(rows: list[dict]) -> str:
    head = (
        "| sparsity (achieved) | fine-tune epochs | test acc. before fine-tune | test acc. after | "
        "nonzero params | ONNX bytes | gzip ONNX bytes |\n|---|---|---|---|---|---|---|\n"
    )
    return (
        head
        + "".join(
            f"| {r['sparsity_requested']:.2f} ({r['sparsity_achieved']:.4f}) | {r['finetune_epochs']} | "
            f"{r['test_accuracy_before_finetune']:.4f} | {r['test_accuracy']:.4f} | "
            f"{r['nonzero_parameters']:,} / {r['total_parameters']:,} | {r['onnx_bytes']:,} | "
            f"{r['onnx_gzip_bytes']:,} |\n"
            for r in rows
        )
        + (
            "\nRow 0.00 is the unpruned standard model. Sparsity counts Conv2d/Linear weights; "
            "nonzero parameters include biases. Dense ONNX stores the zeros, so only the "
            "gzip size shrinks.\n"
        )
    )


def _card(directory: Path, row: dict, onnx_path: Path, command: str) -> None:
    tried = ", ".join(f"{e}: {a:.4f}" for e, a in row["calibration_accuracy_by_epochs"].items())
    write_card(
        directory,
        f"digits_pruned_{round(row['sparsity_requested'] * 100)}: globally pruned digits",
        f"The standard `digits` model with {row['sparsity_requested']:.0%} of its Conv2d/Linear weights "
        "zeroed by global L1 magnitude pruning, then fine-tuned with the masks kept.",
        {
            "Pruning": (
                "`torch.nn.utils.prune.global_unstructured` with `L1Unstructured` over every Conv2d and "
                f"Linear weight of `examples/guard_examples/artifacts/digits_fp32.pt` (biases kept); achieved sparsity "
                f"{row['sparsity_achieved']:.4f}, {row['nonzero_parameters']:,} of {row['total_parameters']:,} "
                "parameters nonzero. Masks made permanent with `prune.remove` before export."
            ),
            "Fine-tuning": (
                f"{row['finetune_epochs']} epochs with `fit(..., model=pruned)`, options "
                f"`{TrainOptions(epochs=row['finetune_epochs']).describe()}`. Length chosen on the "
                f"calibration split (epochs: calibration accuracy; 0 = pruned, not fine-tuned) {tried}."
            ),
            "Results": (
                f"Held-out test accuracy {row['test_accuracy']:.4f} (before fine-tuning "
                f"{row['test_accuracy_before_finetune']:.4f}). ONNX max |torch - onnxruntime| "
                f"{row['onnx_max_abs_diff']:.2g}; gzip-compressed ONNX {row['onnx_gzip_bytes']:,} bytes."
            ),
            "Size and latency": size_and_latency(onnx_path),
            "Recipe": f"`{command}`",
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ZOO)
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        nargs="+",
        default=list(FINETUNE_CANDIDATES),
        help="candidate fine-tuning lengths, chosen per sparsity on calibration",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    command = (
        "python -m guard_examples.pruning --out "
        + str(args.out)
        + " --sparsities "
        + " ".join(f"{s:g}" for s in args.sparsities)
        + " --finetune-epochs "
        + " ".join(str(e) for e in args.finetune_epochs)
    )
    result = run(args.out, tuple(args.sparsities), tuple(args.finetune_epochs), command=command)
    print(table(result["rows"]))
    print(f"wall time {result['wall_seconds']:.1f} s")


if __name__ == "__main__":
    main()
