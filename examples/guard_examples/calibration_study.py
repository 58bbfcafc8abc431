"""Does `guard calibrate` hold its false-positive target when a user brings a model with only a few
hundred clean samples? Seeds x detector sets x ensembles, realised clean flag rate on held-out data.

    python -m guard_examples.calibration_study [--samples 300] [--seeds 5] [--out reports/calibration_study]

The demo's INT8 digits model is brought in as a user would: `calibrate_model` with its defaults
(no separate fit data, so detectors that learn clean statistics are cross-fitted), on `--samples`
clean digits drawn per seed from the images the model never trained on (the calibration and test
splits, 719 in all); the rest of those images measure the realised flag rate. Every detector
combination `guard calibrate`'s flags offer (default squeezers, with or without Mahalanobis, the
confidence margin and STRIP) runs under each ensemble. The goal: realised rate <= target + 1.5
points in every cell.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from guard.api import calibrate_model, detector_tables, upper_bound
from guard_examples.digits_data import load_split
from guard_examples.paths import REPOSITORY, WORKSPACE

ROOT = WORKSPACE
MODEL = REPOSITORY / "digits" / "model.onnx"
ENSEMBLES = ("omnibus", "fisher", "union")


def detector_sets() -> dict[str, list[dict]]:
    """Every on/off combination of the optional detectors, beside the default squeezers."""
    sets = {}
    for mahalanobis, margin, strip in itertools.product((True, False), repeat=3):
        name = "+".join(
            [
                "squeezers",
                *(["mahalanobis"] if mahalanobis else []),
                *(["margin"] if margin else []),
                *(["strip"] if strip else []),
            ]
        )
        sets[name] = detector_tables(
            MODEL, mahalanobis=mahalanobis, confidence_margin=margin, strip=8 if strip else None
        )
    return sets


def run(samples: int, seeds: int, target: float) -> list[dict]:
    pool_x = np.concatenate([load_split("calibration")[0], load_split("test")[0]]).astype(np.float32)
    pool_y = np.concatenate([load_split("calibration")[1], load_split("test")[1]])
    rows = []
    cells = [(s, name, tables, e) for s in range(seeds) for name, tables in detector_sets().items() for e in ENSEMBLES]
    with tempfile.TemporaryDirectory() as work:
        for seed, name, tables, ensemble in tqdm(cells, desc="calibrations", unit="cell"):
            order = np.random.default_rng(seed).permutation(len(pool_x))
            cal, hold = order[:samples], order[samples:]
            report = calibrate_model(
                MODEL,
                "m",
                Path(work),
                pool_x[cal],
                pool_y[cal],
                target_fpr=target,
                holdout=(pool_x[hold], pool_y[hold]),
                detectors=tables,
                ensemble=ensemble,
                seed=seed,
            )
            flagged = round(report["holdout_fpr"] * report["n_holdout"])
            rows.append(
                {
                    "seed": seed,
                    "detectors": name,
                    "ensemble": ensemble,
                    "n_calibration": samples,
                    "n_holdout": report["n_holdout"],
                    "realised": report["holdout_fpr"],
                    "upper_95": upper_bound(flagged, report["n_holdout"]),
                    "folds": report["cross_fit_folds"],
                }
            )
    return rows


def markdown(rows: list[dict], target: float, seeds: int) -> str:
    lines = [
        f"| detectors | ensemble | {' | '.join(f'seed {s}' for s in range(seeds))} | mean | max | "
        f"max <= {target + 0.015:.3f} |",
        "|---|---|" + "---|" * (seeds + 3),
    ]
    for (detectors, ensemble), group in itertools.groupby(rows, key=lambda r: (r["detectors"], r["ensemble"])):
        rates = [r["realised"] for r in sorted(group, key=lambda r: r["seed"])]
        lines.append(
            f"| {detectors} | {ensemble} | "
            + " | ".join(f"{r:.3f}" for r in rates)
            + f" | {np.mean(rates):.3f} | {max(rates):.3f} | "
            + f"{'yes' if max(rates) <= target + 0.015 else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "calibration_study")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = sorted(run(args.samples, args.seeds, args.target), key=lambda r: (r["detectors"], r["ensemble"], r["seed"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows, args.target, args.seeds)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
