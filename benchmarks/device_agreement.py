"""Do the guard's verdicts on CUDA match those on the CPU for the shipped demo model?

    python -m benchmarks.device_agreement [--model examples/guard_examples/repository/digits]

Runs every held-out test image, one request per image as clients send them, through the same
model directory twice: detectors on the CPU, then on CUDA (skipped without a GPU). Prints how many
images each run flags, by which detector, and each detector's largest score difference between
the two. Thresholds are calibrated on one host; this tells whether another device serves the same
decisions (the backend is ONNX Runtime on the CPU both times).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from benchmarks.repositories import load_split
from guard.serving.metrics import GuardMetrics
from guard.serving.model_config import load_model_config
from guard.serving.runtime import ModelRuntime

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples/guard_examples/repository/digits")
    args = parser.parse_args()
    config = load_model_config(args.model)
    x = np.ascontiguousarray(load_split("test")[0])
    verdicts = {}
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        runtime = ModelRuntime(dataclasses.replace(config, device=device), GuardMetrics().for_model(config.name))
        guarded = config.detection.guarded_input
        verdicts[device] = [runtime.execute([{guarded: x[i : i + 1]}])[0].verdict for i in range(len(x))]
        names = list(verdicts[device][0].scores)
        print(
            f"{device}: {sum(v.flagged for v in verdicts[device])} of {len(x)} flagged; by detector "
            + str({n: sum(n in v.flagged_by for v in verdicts[device]) for n in names})
        )
    if "cuda" in verdicts:
        same = sum(a.flagged_by == b.flagged_by for a, b in zip(verdicts["cpu"], verdicts["cuda"]))
        print(f"same flagged_by on {same} of {len(x)} images")
        for n in names:
            cpu = np.array([v.scores[n] for v in verdicts["cpu"]])
            cuda = np.array([v.scores[n] for v in verdicts["cuda"]])
            print(f"{n}: largest |cpu - cuda| {float(np.abs(cpu - cuda).max()):.3g}")


if __name__ == "__main__":
    main()
