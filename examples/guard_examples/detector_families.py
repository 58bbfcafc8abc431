"""Recipe: detector networks trained on several attack families, and the plan that measures, through
the live gateway, how each one detects the family it never saw (leave one family out).

    python -m guard_examples.detector_families --out build/detector-families
    guard evaluate --plan build/detector-families/plan.toml --report-dir reports/detector-families

The shipped detector network (guard_examples.detector_net) learned one family, L-inf PGD, and
reaches 0.97-1.00 on it but about 0.4 on CW and DeepFool. Here the training data cover every
family of the evaluation suite (guard.tools.evaluation.attacks), each made on the TRAIN split
against the FP32 surrogate and kept only where it fools the served INT8 model:

    linf       L-inf gradient attacks: PGD (eps 0.1-0.3, 5-40 steps) and FGSM (eps 0.1-0.3)
    l2         CW-L2 (c in 0.5, 1, 2)
    deepfool   DeepFool (minimal L2 to the nearest boundary)
    square     Square, L-inf 0.3: score-based black box

Negatives are the clean train digits, a Gaussian-noised copy of each (as the shipped network's)
and two corruptions no attack makes on purpose: a random-sign L-inf 0.1 pattern and a 3x3 box
blur, so that "anything perturbed" is not what a network learns. Each network is the shipped
architecture and training (detector_net.train_detector: 32 hidden units, 150 epochs, seed 0):
nothing was chosen on the calibration or test split.

The plan evaluates the served INT8 digits model once per network, all under the same detectors
(the squeezers, margin, Mahalanobis and the network, calibrated by `guard evaluate` on the
calibration split), on the test split:

    digits_pgd_only         the shipped network (PGD only)
    digits_all_families     every family
    digits_without_<F>      every family but F: its rows on F are the held-out figure
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from guard.api import attacks as atk
from guard_examples.detector_net import load_surrogate, noisy, pgd_examples, served_outputs, train_detector
from guard_examples.digits_data import load_split
from guard_examples.evaluation_plan import NETWORK_WEIGHTS, copy_into, write_digits_plan
from guard_examples.paths import REPOSITORY

log = logging.getLogger(__name__)

FAMILIES = ("linf", "l2", "deepfool", "square")
FGSM_EPS = (0.1, 0.2, 0.3)
CW_C = (0.5, 1.0, 2.0)
SIGN_NOISE = 0.1
SEED = 0


def _run(spec: atk.AttackSpec, model: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    return atk.run_attack(spec, model, x, y, seed)


def family_examples(family: str, model: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """One family's adversarial examples of x (every digit attacked once per setting)."""
    if family == "linf":
        pgd, _, _ = pgd_examples(model, x, y, seed, copies=1, progress=False)
        fgsm = [_run(atk.AttackSpec("fgsm", e), model, x, y, seed) for e in FGSM_EPS]
        return np.concatenate([pgd, *fgsm])
    if family == "l2":
        return np.concatenate(
            [
                _run(atk.AttackSpec("cw", None, {"c": c, "kappa": 0.0, "steps": 50, "lr": 0.01}), model, x, y, seed)
                for c in CW_C
            ]
        )
    if family == "deepfool":
        return _run(atk.AttackSpec("deepfool", None, {"steps": 50, "overshoot": 0.02}, 512), model, x, y, seed)
    if family == "square":
        params = {"n_queries": 1000, "n_restarts": 1, "p_init": 0.8, "loss": "margin", "resc_schedule": True}
        return _run(atk.AttackSpec("square", 0.3, {**params, "seed": seed}, 512), model, x, y, seed)
    raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")


def corrupted(x: np.ndarray, seed: int) -> np.ndarray:
    """The corruption negatives: a random-sign L-inf pattern and a 3x3 box blur of each digit."""
    rng = np.random.default_rng(seed)
    sign = np.clip(x + SIGN_NOISE * rng.choice([-1.0, 1.0], size=x.shape), 0.0, 1.0)
    blur = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 3, stride=1, padding=1, count_include_pad=False)
    return np.concatenate([sign, blur.numpy()]).astype(np.float32)


def training_features(onnx_path: Path, progress: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Served features of the negatives and of each family's examples that fool the served model."""
    x, y = load_split("train")
    model = load_surrogate()
    negatives = np.concatenate([x, noisy(np.array(x), SEED), corrupted(np.array(x), SEED)])
    clean = served_outputs(onnx_path, negatives)[1]
    features, counts = {}, {"negatives": len(clean)}
    for family in tqdm(FAMILIES, desc="attack families", disable=not progress):
        adv = family_examples(family, model, np.array(x), np.array(y), SEED)
        logits, feats = served_outputs(onnx_path, adv)
        fooled = logits.argmax(1) != np.tile(y, len(adv) // len(y))
        features[family] = feats[fooled]
        counts[family] = {"examples": len(adv), "fooling": int(fooled.sum())}
    return clean, features, counts


def networks(clean: np.ndarray, features: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The all-families network and one network without each family."""
    chosen = {"all_families": FAMILIES, **{f"without_{f}": tuple(g for g in FAMILIES if g != f) for f in FAMILIES}}
    return {
        name: train_detector(clean, np.concatenate([features[f] for f in families]), seed=SEED)
        for name, families in tqdm(chosen.items(), desc="detector networks")
    }


def write_plan(out: Path, trained: dict[str, dict[str, np.ndarray]], repository: Path = REPOSITORY) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    onnx = copy_into(repository / "digits" / "model.onnx", out, "models/digits/model.onnx")
    models = [
        {
            "name": "digits_pgd_only",
            "onnx": onnx,
            "detector_network": copy_into(
                repository / "digits" / NETWORK_WEIGHTS, out, f"networks/pgd_only/{NETWORK_WEIGHTS}"
            ),
        }
    ]
    for name, params in trained.items():
        path = out / "networks" / name / NETWORK_WEIGHTS
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **params)
        models.append({"name": f"digits_{name}", "onnx": onnx, "detector_network": path.relative_to(out).as_posix()})
    notes = [
        "Leave one family out: each digits_without_<family> model's detector network never saw that family; "
        "digits_pgd_only is the shipped network (PGD only), digits_all_families saw every family "
        "(guard_examples.detector_families).",
    ]
    return write_digits_plan(out, notes, models, "guard_examples.detector_families", repository)


ROW_FAMILY = {"fgsm": "linf", "pgd": "linf", "mifgsm": "linf", "bim": "linf", "cw": "l2", "deepfool": "deepfool"}
ROW_FAMILY["square"] = "square"


def lofo_table(results: dict, scorer: str = "detector_network", at: str = "det@0.05") -> str:
    """The leave-one-family-out table from `guard evaluate`'s results.json: per attack row of the
    suite, `scorer`'s detection at 5% FPR under the shipped network, the all-families network and
    the network that never saw the row's family (the held-out figure)."""
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for row in results["rows"]:
        family = ROW_FAMILY.get(row["attack"])
        if family is None or scorer not in row["scorers"]:
            continue  # adaptive and trigger rows: not a training family
        key = (row["attack"], "-" if row["eps"] is None else f"{row['eps']:g}")
        cells.setdefault(key, {"family": family})[row["model"]] = row["scorers"][scorer][at]
    lines = [
        "| attack | eps | family | PGD only (shipped) | all families | without its family (held out) |",
        "|---|---|---|---|---|---|",
    ]
    for (attack, eps), c in cells.items():
        held = c.get(f"digits_without_{c['family']}")
        lines.append(
            f"| {attack} | {eps} | {c['family']} | {c.get('digits_pgd_only', float('nan')):.2f} | "
            f"{c.get('digits_all_families', float('nan')):.2f} | {float('nan') if held is None else held:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/detector-families"))
    parser.add_argument(
        "--table",
        type=Path,
        metavar="RESULTS_JSON",
        help="instead of building: print the leave-one-family-out table of `guard evaluate`'s results.json",
    )
    args = parser.parse_args(argv)
    if args.table:
        results = json.loads(args.table.read_text())
        print(lofo_table(results))
        print(lofo_table(results, "ensemble"))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    clean, features, counts = training_features(REPOSITORY / "digits" / "model.onnx")
    path = write_plan(args.out, networks(clean, features))
    (args.out / "training.json").write_text(json.dumps(counts, indent=1))
    from guard.api import load_plan  # what guard evaluate will check, checked now

    load_plan(path)
    print(json.dumps(counts))
    print(path)


if __name__ == "__main__":
    main()
