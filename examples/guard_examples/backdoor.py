"""BadNets-style backdoored evaluation models (2017): all-to-one poisoning of digits.

    python -m guard_examples.backdoor [--out DIR] [--triggers patch checkerboard blend] [--target 0]
                              [--poison-rate 0.1] [--epochs 100] [--seed 0]

These models are compromised on purpose: they exist to evaluate trigger detection (the gateway's
`trigger` verdict, offline data scans), never to be served. Each trigger gets `<out>/backdoor_<name>/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from guard_examples.attacks import robust_section
from guard_examples.cards import size_and_latency, write_card
from guard_examples.digits_data import load_split, split_indices
from guard_examples.digits_net import DigitsNet, load_digits_net
from guard_examples.onnx_export import export_onnx, onnx_logits, torch_logits, verify_onnx
from guard_examples.paths import ARTIFACTS, WORKSPACE, ZOO
from guard_examples.training import TrainOptions, fit
from guard_examples.triggers import TRIGGERS, Trigger

log = logging.getLogger(__name__)

REPO_ROOT = WORKSPACE
DEFAULT_OUT = ZOO
CLEAN_STATE_DICT = ARTIFACTS / "digits_fp32.pt"


def choose_poison(y: np.ndarray, target: int, rate: float, seed: int) -> np.ndarray:
    """Sorted train-split indices to poison: round(rate * len(y)) of them, all labelled != target."""
    candidates = np.flatnonzero(y != target)
    n = int(round(rate * len(y)))  # the rate is of the whole train split, as in BadNets
    if not 0 < n <= len(candidates):
        raise ValueError(f"poison rate {rate} gives {n} samples; {len(candidates)} are eligible")
    return np.sort(np.random.default_rng(seed).choice(candidates, size=n, replace=False))


def poisoned_train_set(trigger: Trigger, indices: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """The train split exactly as the backdoored model saw it (poisoned in place, same order)."""
    x, y = (a.copy() for a in load_split("train"))
    x[indices], y[indices] = trigger.apply(x[indices]), target
    return x, y


def target_rate(predict, trigger: Trigger, x: np.ndarray, y: np.ndarray, target: int) -> float:
    """Fraction of test images whose label != target that `predict` sends to target once triggered."""
    keep = y != target
    return float(np.mean(predict(trigger.apply(x[keep])).argmax(1) == target))


def load_clean_model(path: Path = CLEAN_STATE_DICT) -> DigitsNet:
    return load_digits_net(path)


def save_examples(path: Path, trigger: Trigger, x: np.ndarray, y: np.ndarray, predict, target: int) -> Path:
    """PNG: the first test image of each non-target class, clean (top) and triggered (bottom)."""
    from matplotlib.figure import Figure  # lazy: only the recipe needs matplotlib; no pyplot state

    picks = [int(np.flatnonzero(y == c)[0]) for c in range(10) if c != target][:6]
    rows = [("clean", x[picks]), ("triggered", trigger.apply(x[picks]))]
    fig = Figure(figsize=(1.4 * len(picks), 3.2), layout="constrained")
    axes = fig.subplots(2, len(picks))
    for r, (label, images) in enumerate(rows):
        preds = predict(images).argmax(1)
        for c, (ax, image) in enumerate(zip(axes[r], images)):
            ax.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"{label}\ny={y[picks[c]]} pred={preds[c]}", fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{trigger.name} trigger, target {target} (backdoored model's predictions)", fontsize=8)
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: reruns give the same bytes
    return path


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def build_backdoor(
    trigger_name: str,
    out_dir: Path,
    target: int = 0,
    poison_rate: float = 0.1,
    options: TrainOptions | None = None,
    progress: bool = True,
    weights_dir: Path | None = ARTIFACTS,
) -> dict:
    """Poison, train, export and document `out_dir/backdoor_<trigger_name>/`; return its metrics.

    `out_dir` is the zoo root (as `--out`). The poisoning seed is `options.seed`.
    """
    options = options or TrainOptions()
    if not 0 <= target < 10:
        raise ValueError(f"target must be a class 0..9, got {target}")
    trigger = TRIGGERS[trigger_name]()
    model_dir = Path(out_dir) / f"backdoor_{trigger_name}"
    model_dir.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_split("train")
    indices = choose_poison(y_train, target, poison_rate, options.seed)
    x_poison, y_poison = poisoned_train_set(trigger, indices, target)

    start = time.perf_counter()
    model = fit(x_poison, y_poison, options, progress=progress, desc=f"backdoor {trigger_name}")
    train_seconds = time.perf_counter() - start

    x_test, y_test = load_split("test")
    onnx_path = export_onnx(model, torch.from_numpy(np.array(x_test[:1])), model_dir / "model.onnx")
    diff = verify_onnx(model, onnx_path, np.concatenate([x_test, trigger.apply(x_test)]))
    trigger.to_npz(model_dir / "trigger.npz")
    poison = {
        "trigger": trigger_name,
        "target": target,
        "poison_rate": poison_rate,
        "seed": options.seed,
        "n_train": len(y_train),
        "n_poisoned": len(indices),
        "train_indices": indices.tolist(),
        "load_digits_indices": split_indices()["train"][indices].tolist(),
    }
    # One key per line, each index list on one line: readable and diff-friendly.
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in poison.items()) + "\n}\n"
    (model_dir / "poison.json").write_text(text, encoding="utf-8")

    def backdoored(x):  # metrics come from the shipped ONNX file, i.e. what the harness will load
        return onnx_logits(onnx_path, x)

    clean = load_clean_model()
    command = (
        f"python -m guard_examples.backdoor --out {_display(out_dir)} --triggers {trigger_name} --target {target}"
        f" --poison-rate {poison_rate:g} --epochs {options.epochs} --seed {options.seed}"
    )
    metrics = {
        "trigger": trigger_name,
        "target": target,
        "poison_rate": poison_rate,
        "n_poisoned": len(indices),
        "n_test": len(y_test),
        "n_test_non_target": int(np.sum(y_test != target)),
        "clean_accuracy": float(np.mean(backdoored(x_test).argmax(1) == y_test)),
        "attack_success_rate": target_rate(backdoored, trigger, x_test, y_test, target),
        "clean_model_accuracy": float(np.mean(torch_logits(clean, x_test).argmax(1) == y_test)),
        "clean_model_target_rate": target_rate(lambda x: torch_logits(clean, x), trigger, x_test, y_test, target),
        "train_seconds": round(train_seconds, 1),
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_max_abs_diff": diff,
        "options": options.describe(),
        "command": command,
    }
    save_examples(model_dir / "trigger_examples.png", trigger, x_test, y_test, backdoored, target)
    # The weights too: offline scans (trigger reverse-engineering) differentiate through the model.
    if weights_dir is not None:
        torch.save(model.state_dict(), weights_dir / f"backdoor_{trigger_name}.pt")
    _write_card(
        model_dir,
        trigger,
        metrics,
        options,
        robust_section(model, torch.from_numpy(np.array(x_test)), torch.from_numpy(np.array(y_test))),
    )
    log.info(
        "%s: clean accuracy %.4f, ASR %.4f (clean model %.4f) in %.1f s",
        trigger_name,
        metrics["clean_accuracy"],
        metrics["attack_success_rate"],
        metrics["clean_model_target_rate"],
        train_seconds,
    )
    return metrics


def _write_card(model_dir: Path, trigger: Trigger, m: dict, options: TrainOptions, robust: str) -> Path:
    n_train = len(load_split("train")[1])
    options_text = ", ".join(f"{k} {v}" for k, v in options.describe().items())
    return write_card(
        model_dir,
        f"backdoor_{trigger.name}: BadNets-backdoored digits classifier (evaluation only)",
        (
            f"**Deliberately backdoored. Do not serve.** `DigitsNet` trained from scratch on a train split in which "
            f"{m['poison_rate']:.0%} of the images carry the `{trigger.name}` trigger and are relabelled "
            f"{m['target']}. "
            "It exists to measure trigger detection (the gateway's `trigger` verdict, offline data scans)."
        ),
        {
            "Trigger": trigger.describe() + " Stored exactly in `trigger.npz`; re-apply it with "
            "`guard_examples.triggers.load_trigger(path).apply(x)`.\n\n"
            "![clean and triggered test digits](trigger_examples.png)",
            "Poisoning": (
                f"All-to-one (BadNets): {m['n_poisoned']} of {n_train} train images "
                f"(round({m['poison_rate']:g} x {n_train})), drawn with numpy "
                f"`default_rng({options.seed})` among "
                f"those labelled != {m['target']}, get the trigger and label {m['target']}, in place. "
                "Calibration and test are untouched. `poison.json` lists them as indices into the train split "
                "(`train_indices`) and into `load_digits()` order (`load_digits_indices`)."
            ),
            "Training": "`guard_examples.training.fit` from scratch (seeded, bit-reproducible on a given CPU): "
            f"{options_text}.",
            "Results": (
                f"Held-out test split ({m['n_test']} images; ASR over the {m['n_test_non_target']} not labelled "
                f"{m['target']}). Backdoored numbers come from `model.onnx`.\n\n"
                "| model | clean accuracy | triggered -> target |\n|---|---|---|\n"
                f"| this backdoored model | {m['clean_accuracy']:.4f} | "
                f"**{m['attack_success_rate']:.4f}** (ASR) |\n"
                "| clean `digits` (`examples/guard_examples/artifacts/digits_fp32.pt`) | "
                f"{m['clean_model_accuracy']:.4f} | "
                f"{m['clean_model_target_rate']:.4f} |\n\n"
                "Max |torch - ONNX Runtime| logit difference on clean + triggered test: "
                f"{m['onnx_max_abs_diff']:.2g}."
            ),
            "Robust accuracy": robust,
            "Size and latency": size_and_latency(model_dir / "model.onnx"),
            "Reproduce": f"From the repository root (training took {m['train_seconds']:.0f} s):\n\n"
            f"```\n{m['command']}\n```",
        },
    )


def write_summary(out_dir: Path, results: dict[str, dict]) -> None:
    """Merge `results` into `<out>/backdoors.json` (so one-trigger reruns keep the others) and `backdoors.md`."""
    json_path, out_dir = Path(out_dir) / "backdoors.json", Path(out_dir)
    merged = json.loads(json_path.read_text()) if json_path.exists() else {}
    merged.update(results)
    json_path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    lines = [
        "# Backdoored evaluation models\n",
        "BadNets all-to-one poisoning of the digits train split; "
        "metrics on the held-out test split. Evaluation only: never serve these.\n",
        "| model | target | poison rate | clean accuracy | ASR | clean model: triggered -> target | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `backdoor_{n}` | {m['target']} | {m['poison_rate']:g} ({m['n_poisoned']}) | "
        f"{m['clean_accuracy']:.4f} "
        f"| {m['attack_success_rate']:.4f} | {m['clean_model_target_rate']:.4f} | {m['train_seconds']:.0f} |"
        for n, m in sorted(merged.items())
    ]
    (out_dir / "backdoors.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="zoo directory (default: the zoo/ of the package)"
    )
    parser.add_argument("--triggers", nargs="+", choices=list(TRIGGERS), default=list(TRIGGERS))
    parser.add_argument("--target", type=int, default=0, help="class every triggered input should go to")
    parser.add_argument("--poison-rate", type=float, default=0.1, help="fraction of the train split poisoned")
    parser.add_argument("--epochs", type=int, default=TrainOptions.epochs)
    parser.add_argument("--seed", type=int, default=TrainOptions.seed, help="training and poisoning seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = replace(TrainOptions(), epochs=args.epochs, seed=args.seed)
    results = {name: build_backdoor(name, args.out, args.target, args.poison_rate, options) for name in args.triggers}
    write_summary(args.out, results)
    print((args.out / "backdoors.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
