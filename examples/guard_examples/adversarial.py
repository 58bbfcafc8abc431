"""Recipe: PGD adversarial training (ICLR 2018) of DigitsNet, and a robustness report.

    python -m guard_examples.adversarial [--out DIR] [--eps 0.1 0.2 0.3] [--epochs 20 30 40] [--steps 7] [--lam 1]

Training fine-tunes the standard weights (examples/guard_examples/artifacts/digits_fp32.pt) with one `fit` call per
entry of --eps/--epochs (an eps curriculum: each call restarts Adam). Every default was chosen on
the calibration split by mean accuracy over clean and PGD-40 eps 0.1/0.2/0.3; see MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from guard.api import untargeted_pgd
from guard_examples.attacks import robust_accuracy
from guard_examples.cards import size_and_latency, write_card
from guard_examples.digits import STATE_DICT_PATH
from guard_examples.digits_data import load_split
from guard_examples.digits_net import DigitsNet, load_digits_net
from guard_examples.onnx_export import export_onnx, verify_onnx
from guard_examples.paths import ZOO
from guard_examples.train_utils import single_thread
from guard_examples.training import TrainOptions, fit

log = logging.getLogger(__name__)

EVAL_EPS = (0.1, 0.2, 0.3)
ATTACK = {"name": "PGD", "norm": "Linf", "steps": 40, "step_size": 0.01, "random_start": True, "seed": 0}
STRONG_RUNS = ((40, 0.01, 0), (100, 0.01, 1), (100, 0.01, 2))
"""(steps, step size, seed) of each PGD run in the stronger check; a sample counts only if it survives all."""
STRONG = "adversarial, worst of 3 PGD runs"
# Chosen on calibration (mean of clean and PGD-40 eps 0.1/0.2/0.3): adversarial loss alone at eps 0.3
# collapses to one class, so the clean loss is kept (lambda 1) and eps ramps up over three stages.
DEFAULT_EPS = (0.1, 0.2, 0.3)
DEFAULT_EPOCHS = (20, 30, 40)
DEFAULT_STEPS = 7
DEFAULT_LAMBDA: float | None = 1.0


def stages(
    eps: Sequence[float] = DEFAULT_EPS,
    epochs: Sequence[int] = DEFAULT_EPOCHS,
    steps: int = DEFAULT_STEPS,
    lam: float | None = DEFAULT_LAMBDA,
    seed: int = 0,
) -> list[TrainOptions]:
    """One TrainOptions per curriculum stage (the PGD paper's step size rule: 2.5 * eps / steps)."""
    if len(eps) != len(epochs):
        raise ValueError(f"{len(eps)} eps values but {len(epochs)} epoch counts")
    return [TrainOptions(epochs=n, seed=seed, adv_eps=e, adv_steps=steps, adv_lambda=lam) for e, n in zip(eps, epochs)]


def load_standard(path: Path = STATE_DICT_PATH) -> DigitsNet:
    return load_digits_net(path)


def train_adversarial(
    options: TrainOptions | Sequence[TrainOptions],
    init: Path | None = STATE_DICT_PATH,
    progress: bool = True,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
) -> nn.Module:
    """Adversarially train on the train split (or x, y), from `init` weights (None: from scratch)."""
    if x is None:
        x, y = load_split("train")
    model = load_standard(init) if init is not None else None
    for stage in [options] if isinstance(options, TrainOptions) else list(options):
        model = fit(x, y, stage, model=model, progress=progress, desc=f"PGD-{stage.adv_steps} eps {stage.adv_eps:g}")
    return model


def robustness_table(
    models: dict[str, nn.Module],
    eps_list: Sequence[float] = EVAL_EPS,
    split: str = "test",
    steps: int = ATTACK["steps"],
    step_size: float = ATTACK["step_size"],
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """{model: {"clean": acc, "<eps>": robust acc}} under PGD-`steps` with a seeded random start."""
    x, y = (torch.from_numpy(np.array(a)) for a in load_split(split))
    table = {}
    # One thread: the numbers then do not depend on the core count, and it is faster on a busy CPU.
    with single_thread():
        for name, model in models.items():
            model.eval()
            row = {"clean": robust_accuracy(model, x, y, 0.0)}
            for eps in eps_list:
                row[f"{eps:g}"] = robust_accuracy(model, x, y, eps, steps=steps, step_size=step_size)
                if progress:
                    log.info("%s %s eps %g: %.4f", split, name, eps, row[f"{eps:g}"])
            table[name] = row
    return table


def worst_case_accuracy(
    model: nn.Module,
    eps_list: Sequence[float] = EVAL_EPS,
    split: str = "test",
    runs: Sequence[tuple[int, float, int]] = STRONG_RUNS,
) -> dict[str, float]:
    """Per-eps accuracy when each sample must survive every PGD run (more steps, fresh random starts).

    PGD-40 with step 0.01 moves at most 0.4 in total, which at eps 0.3 barely crosses the ball from a
    random start; this check shows how much of the single-run number is the attack's weakness.
    """
    x, y = (torch.from_numpy(np.array(a)) for a in load_split(split))
    model.eval()
    row = {}
    with single_thread():
        for eps in eps_list:
            alive = torch.ones(len(y), dtype=torch.bool)
            for steps, step_size, seed in runs:
                adv = untargeted_pgd(model, x, y, eps, steps, step_size, torch.Generator().manual_seed(seed))
                with torch.no_grad():
                    alive &= model(adv).argmax(1) == y
            row[f"{eps:g}"] = float(alive.float().mean())
    return row


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    columns = list(next(iter(table.values())))
    head = "| model | " + " | ".join("clean" if c == "clean" else f"eps {c}" for c in columns) + " |\n"
    rule = "|---" * (len(columns) + 1) + "|\n"
    return (
        head
        + rule
        + "".join(f"| {n} | " + " | ".join(f"{r[c]:.4f}" for c in columns) + " |\n" for n, r in table.items())
    )


def plot(table: dict[str, dict[str, float]], path: Path, attack: str = "PGD-40, step 0.01") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless: recipes run on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, row in table.items():
        eps = [0.0] + [float(k) for k in row if k != "clean"]
        ax.plot(
            eps,
            [row["clean"]] + [v for k, v in row.items() if k != "clean"],
            marker="o",
            label=name,
            linestyle="--" if name == STRONG else "-",
        )
    ax.set(
        xlabel=f"L-inf eps ({attack}, random start)",
        ylabel="test accuracy",
        ylim=(0, 1.02),
        title="digits: robust accuracy vs eps",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(
    out: Path,
    options: list[TrainOptions],
    progress: bool = True,
    command: str = "python -m guard_examples.adversarial",
    eval_eps: Sequence[float] = EVAL_EPS,
    eval_steps: int = ATTACK["steps"],
    strong_runs: Sequence[tuple[int, float, int]] = STRONG_RUNS,
) -> dict:
    """Train, evaluate both models on test (and calibration), export and write every artifact."""
    start = time.perf_counter()
    model = train_adversarial(options, progress=progress)
    train_seconds = time.perf_counter() - start
    models = {"standard": load_standard(), "adversarial": model}
    attack = {**ATTACK, "steps": eval_steps}
    test = robustness_table(models, eval_eps, steps=eval_steps, progress=progress)
    calibration = robustness_table(models, eval_eps, split="calibration", steps=eval_steps)
    strong = {"clean": test["adversarial"]["clean"], **worst_case_accuracy(model, eval_eps, runs=strong_runs)}
    x_test, _ = load_split("test")
    directory = out / "digits_adv"
    onnx_path = export_onnx(model, torch.from_numpy(np.array(x_test[:1])), directory / "model.onnx")
    diff = verify_onnx(model, onnx_path, x_test)
    result = {
        "command": command,
        "init": "examples/guard_examples/artifacts/digits_fp32.pt",
        "training": [o.describe() for o in options],
        "attack": attack,
        "eps": [0.0, *eval_eps],
        "test": test,
        "calibration": calibration,
        "n_test": len(x_test),
        "onnx_max_abs_diff": diff,
        "stronger_attack": {"runs": [list(r) for r in strong_runs], "test": {STRONG: strong}},
    }
    out.mkdir(parents=True, exist_ok=True)
    plot({**test, STRONG: strong}, out / "robustness.png", f"PGD-{eval_steps}, step {attack['step_size']}")
    _card(directory, result, onnx_path)
    # Timings stay out of the committed JSON so a rerun reproduces it exactly.
    (out / "robustness.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return {**result, "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - start}


def _card(directory: Path, result: dict, onnx_path: Path) -> None:
    attack, (x_train, _) = result["attack"], load_split("train")
    ink = x_train[x_train > 0.05]
    stages_text = "\n".join(f"{i + 1}. `{o}`" for i, o in enumerate(result["training"]))
    write_card(
        directory,
        "digits_adv: PGD adversarially trained digits",
        "DigitsNet fine-tuned from the standard `digits` weights with PGD adversarial training "
        "(ICLR 2018: L-inf, random start, step 2.5 * eps / steps), in an eps curriculum.",
        {
            "Training": (
                f"From `{result['init']}`, one `guard_examples.training.fit` call per stage on the train split "
                f"(`TrainOptions.describe()`):\n\n{stages_text}"
            ),
            "Hyperparameter choice": (
                "Compared on the calibration split only, by mean accuracy over clean and PGD-40 eps 0.1/0.2/0.3: "
                "from the standard weights vs from scratch, one training eps (0.2 or 0.3) vs the curriculum "
                "0.1 -> 0.2 -> 0.3, adversarial loss alone vs clean + lambda * adversarial (lambda 1 and 2), and "
                "stage lengths (PGD-7 throughout). Adversarial loss alone at eps 0.3 collapsed to a constant "
                "prediction both from scratch and from the standard weights; alone after the curriculum it traded "
                "most clean accuracy away. The curriculum with lambda 1 scored best. Calibration accuracy of this "
                "recipe's output:\n\n" + markdown_table(result["calibration"])
            ),
            "Robustness (held-out test)": (
                f"{result['n_test']} test samples. PGD-{attack['steps']}, L-inf, step {attack['step_size']}, random "
                f"start (seed {attack['seed']}), `guard_examples.attacks.robust_accuracy`:\n\n"
                + markdown_table({**result["test"], **result["stronger_attack"]["test"]})
                + "\nThe last row is a stronger check: a sample counts only if it survives every PGD run in "
                f"{result['stronger_attack']['runs']} ([steps, step size, seed]); PGD-40 with step 0.01 moves at "
                "most 0.4 in total from one random start, so at eps 0.2 and 0.3 it is a weak attack.\n\n"
                f"Why eps 0.3 is hard here: {np.mean(ink <= 0.3):.0%} of the inked train pixels (> 0.05) are <= 0.3 "
                f"and {np.mean(ink >= 0.9):.0%} are >= 0.9 (upsampled 8x8 digits with 17 grey levels), so eps 0.3 "
                "can erase much of a digit, unlike near-binary MNIST."
            ),
            "Export": f"ONNX opset 17; max |torch - onnxruntime| on the test split {result['onnx_max_abs_diff']:.2g}.",
            "Size and latency": size_and_latency(onnx_path),
            "Recipe": f"`{result['command']}`",
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ZOO)
    parser.add_argument("--eps", type=float, nargs="+", default=list(DEFAULT_EPS), help="training eps per stage")
    parser.add_argument("--epochs", type=int, nargs="+", default=list(DEFAULT_EPOCHS), help="epochs per stage")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="PGD steps during training")
    parser.add_argument(
        "--lam",
        type=lambda t: None if t.lower() == "none" else float(t),
        default=DEFAULT_LAMBDA,
        help="'none': adversarial loss only; else clean + lam * adversarial",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    command = (
        f"python -m guard_examples.adversarial --out {args.out} --eps {' '.join(f'{e:g}' for e in args.eps)} "
        f"--epochs {' '.join(map(str, args.epochs))} --steps {args.steps} --lam {args.lam}"
    )
    result = run(args.out, stages(args.eps, args.epochs, args.steps, args.lam), command=command)
    print(markdown_table({**result["test"], **result["stronger_attack"]["test"]}))
    print(f"train {result['train_seconds']:.1f} s, wall {result['wall_seconds']:.1f} s")


if __name__ == "__main__":
    main()
