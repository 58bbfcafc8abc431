"""A backdoor the project has never seen, brought in with `guard calibrate`'s defaults: how many of
its triggered inputs does the live gateway flag, at what clean flag rate?

    python -m guard_examples.trigger_holdout [--epochs 100] [--samples 300] [--out reports/trigger_holdout]

The trigger is none of the zoo's (corner patch, checkerboard, blended noise) and none of them is
ever used here: a horizontal sinusoid added over the whole image, x + 0.12 * sin(2 pi * 3 * col / 16),
clipped to [0, 1] (the signal of the SIG attack (ICIP 2019), used here as an ordinary poisoned-label
trigger). A digits CNN is trained on the train split with 10% of it poisoned towards class 0,
exported to ONNX, and brought under the guard the way a user would: `calibrate_model` with its
default detectors and ensemble on `--samples` clean calibration-split images, no separate fit data.
The trained model is measured through a live gateway on the test split: clean test images (flag
rate) and the triggered test images of every other class (detection).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as triton

from guard.api import BackgroundServer, ServerSettings, calibrate_model, squeezer_tables, upper_bound
from guard_examples.backdoor import choose_poison
from guard_examples.digits_data import load_split
from guard_examples.onnx_export import export_onnx
from guard_examples.paths import WORKSPACE
from guard_examples.training import TrainOptions, fit

ROOT = WORKSPACE
TARGET = 0


@dataclass(frozen=True)
class Sinusoid:
    amplitude: float = 0.12
    cycles: int = 3

    def apply(self, x: np.ndarray) -> np.ndarray:
        columns = np.arange(x.shape[-1], dtype=np.float32)
        wave = self.amplitude * np.sin(2 * np.pi * self.cycles * columns / x.shape[-1]).astype(np.float32)
        return np.clip(x + wave, 0.0, 1.0).astype(np.float32)


# What a user who brings this model runs (guard calibrate's defaults), beside the squeezers alone
# (wave 1's defaults), on the same samples.
CONFIGURATIONS = {"defaults": None, "squeezers_only": squeezer_tables()}


def verdicts(url: str, model: str, x: np.ndarray) -> np.ndarray:
    """The gateway's verdict for each row, one request per row."""
    with triton.InferenceServerClient(url) as client:
        out = []
        for row in x:
            tensor = triton.InferInput("input", [1, *row.shape], "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(row[None], np.float32))
            out.append(client.infer(model, [tensor]).get_response().parameters["guard_verdict"].string_param)
        return np.array(out)


def run(epochs: int, samples: int, seed: int, work: Path) -> dict:
    trigger = Sinusoid()
    x_train, y_train = load_split("train")
    poisoned = choose_poison(y_train, TARGET, 0.1, seed)
    x_train, y_train = x_train.copy(), y_train.copy()
    x_train[poisoned], y_train[poisoned] = trigger.apply(x_train[poisoned]), TARGET
    options = replace(TrainOptions(), epochs=epochs, seed=seed)
    model = fit(x_train, y_train, options, desc="backdoor (held-out trigger)")
    x_test, y_test = load_split("test")
    onnx_path = export_onnx(model, torch.from_numpy(np.array(x_test[:1])), work / "backdoored.onnx")
    x_cal, y_cal = load_split("calibration")
    pick = np.sort(np.random.default_rng(seed).choice(len(x_cal), size=min(samples, len(x_cal)), replace=False))
    reports = {
        name: calibrate_model(
            onnx_path,
            name,
            work / "repository",
            x_cal[pick],
            y_cal[pick],
            holdout=(x_test, y_test),
            seed=seed,
            detectors=tables,
        )
        for name, tables in CONFIGURATIONS.items()
    }
    others = y_test != TARGET
    triggered = trigger.apply(x_test[others])
    with torch.no_grad():
        success = model(torch.from_numpy(triggered)).argmax(1).numpy() == TARGET
    rows = {}
    with BackgroundServer(ServerSettings(work / "repository", grpc_port=0, metrics_port=-1, policy="flag")) as srv:
        for name, report in reports.items():
            clean, attacked = verdicts(srv.grpc_url, name, x_test), verdicts(srv.grpc_url, name, triggered)
            clean_flags = int((clean != "clean").sum())
            rows[name] = {
                "detectors": sorted(report["thresholds"]),
                "ensemble": report["ensemble"]["method"],
                "triggered_flagged": float((attacked != "clean").mean()),
                "successful_triggered_flagged": float((attacked[success] != "clean").mean()) if success.any() else None,
                "clean_flag_rate": clean_flags / len(clean),
                "clean_flag_rate_upper_95": upper_bound(clean_flags, len(clean)),
                "trigger_verdicts": {v: int((attacked == v).sum()) for v in np.unique(attacked)},
            }
    return {
        "trigger": "sinusoid (amplitude 0.12, 3 cycles, horizontal)",
        "target": TARGET,
        "epochs": epochs,
        "seed": seed,
        "n_calibration": len(pick),
        "attack_success": float(success.mean()),
        "n_triggered": int(len(triggered)),
        "n_successful": int(success.sum()),
        "n_clean": len(x_test),
        "configurations": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=TrainOptions.epochs)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "trigger_holdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as work:
        result = run(args.epochs, args.samples, args.seed, Path(work))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
