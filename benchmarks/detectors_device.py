"""The guard's own tensor work per batch (variants in, scores out), on the CPU and on CUDA when present.

    python -m benchmarks.detectors_device [--sizes 1 16 64] [--repeats 50] [--threads 1]
                                          [--out results/detectors_device.json]

Measures what the pipeline adds around the backend call: building the squeezed variants
(bit depth, 2x2 median) and scoring them (softmax, L1 distances, confidence margin), plus the
host<->device copies the pipeline makes, for a digits-sized input (1x16x16) and a
surveillance-sized one (3x224x224). The backend is not run: logits are random, shapes are real.
CUDA times are taken after torch.cuda.synchronize(); each figure is the median of `repeats`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from guard.detection.detectors import Outputs
from guard.detection.detectors.confidence import ConfidenceMarginDetector
from guard.detection.detectors.squeezing import BitDepthDetector, MedianDetector

SHAPES = {"digits 1x16x16": (1, 16, 16), "image 3x224x224": (3, 224, 224)}
CLASSES = 10


def guard_work(x_host: np.ndarray, device: torch.device, detectors, logits_host: np.ndarray) -> None:
    """One batch's detector work as guard.detection.pipeline does it, host arrays in and out."""
    x = torch.from_numpy(x_host).to(device)
    variants = torch.cat([x, *(d.variants(x) for d in detectors if d.num_variants)])
    variants.cpu()  # the pipeline hands the backend a host array
    logits = torch.from_numpy(logits_host).to(device)
    batch = x.shape[0]
    grouped = logits.view(-1, batch, CLASSES)
    probabilities = torch.softmax(grouped, dim=-1)
    original, offset, scores = Outputs(grouped[0], probabilities[0]), 1, []
    for d in detectors:
        own = (
            Outputs(grouped[offset : offset + d.num_variants], probabilities[offset : offset + d.num_variants])
            if d.num_variants
            else None
        )
        offset += d.num_variants
        scores.append(d.score(original, own))
    torch.stack(scores).cpu()


def median_ms(fn, device: torch.device, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("results/detectors_device.json"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the gateway's default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    detectors = [
        BitDepthDetector("bit_depth_5", 1.0, bits=5),
        MedianDetector("median_2x2", 1.0, size=2),
        ConfidenceMarginDetector("confidence_margin", 1.0),
    ]
    rng = np.random.default_rng(0)
    rows = []
    with torch.inference_mode():
        for label, shape in SHAPES.items():
            for batch in args.sizes:
                x = rng.random((batch, *shape), dtype=np.float32)
                logits = rng.normal(size=(3 * batch, CLASSES)).astype(np.float32)
                row = {"input": label, "batch": batch}
                for device in devices:

                    def work(x=x, device=device, logits=logits):
                        return guard_work(x, device, detectors, logits)

                    row[f"{device.type}_ms"] = median_ms(work, device, args.repeats)
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print("| input | batch | " + " | ".join(f"{d.type} ms" for d in devices) + " |")
    print("|---|---|" + "---|" * len(devices))
    for r in rows:
        print(f"| {r['input']} | {r['batch']} | " + " | ".join(f"{r[f'{d.type}_ms']:.3f}" for d in devices) + " |")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
