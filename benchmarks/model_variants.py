"""CPU latency of the digits model's FP32, INT8 and FP16 files, measured side by side in one run.

python -m benchmarks.model_variants [--repeats 500]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from guard_examples.cards import cpu_latency

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "FP32": ROOT / "examples/guard_examples/repository/digits_fp32/model.onnx",
    "INT8 (QDQ)": ROOT / "examples/guard_examples/repository/digits/model.onnx",
    "FP16": ROOT / "examples/guard_examples/zoo/digits_fp16/model.onnx",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args()
    print("| model | bytes | batch 1 ms | batch 32 ms |\n|---|---|---|---|")
    for name, path in VARIANTS.items():
        latency = cpu_latency(path, (1, 32), args.repeats)
        print(f"| {name} | {path.stat().st_size:,} | {latency[1]:.3f} | {latency[32]:.3f} |")


if __name__ == "__main__":
    main()
