"""The gateway on the demo `digits` model next to in-process ONNX Runtime on the same batches.

    python -m benchmarks.digits_core [--duration 5] [--out results/digits_core.json]

Rows of the table, measured in one run on this machine:
- ort batch=1 / batch=16: the bare model in this process, the floor for one request;
- ort guard rows: the same model on the (1 + K) rows the guard sends per original row;
- echo c=1 / c=16: a grpc.aio server answering a canned response of the gateway's size, the
  least a Python gRPC hop costs here;
- gateway c=1 / c=16: `guard serve` (policy flag, the shipped config) in its own process,
  1-row requests from a closed-loop client at that concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.echo_server import echo_server
from benchmarks.gateway_process import gateway
from benchmarks.loadgen import closed_loop, infer_requests
from benchmarks.repositories import load_split

REPOSITORY = Path(__file__).resolve().parents[1] / "examples" / "guard_examples" / "repository"


def ort_floor(batches: list[np.ndarray], duration: float) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # as the shipped config
    session = ort.InferenceSession(
        str(REPOSITORY / "digits" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    for x in batches[:50]:
        session.run(["logits"], {"input": x})
    latencies, rows, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        x = batches[len(latencies) % len(batches)]
        t = time.perf_counter()
        session.run(["logits"], {"input": x})
        latencies.append(time.perf_counter() - t)
        rows += len(x)
    elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3
    return {
        "throughput_rps": len(latencies) / elapsed,
        "rows_per_s": rows / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=Path("results/digits_core.json"))
    args = parser.parse_args()
    x, _ = load_split("test")
    singles = [np.ascontiguousarray(x[i : i + 1]) for i in range(len(x))]
    sixteens = [np.ascontiguousarray(x[i : i + 16]) for i in range(0, len(x) - 15, 16)]
    guard_rows = 3  # the shipped config: the original plus two squeezed copies
    results = {
        "ort batch=1": ort_floor(singles, args.duration),
        "ort batch=16": ort_floor(sixteens, args.duration),
        "ort batch=3 (guard rows for 1)": ort_floor([np.concatenate([s] * guard_rows) for s in singles], args.duration),
    }
    requests = infer_requests("digits", "input", singles)
    with echo_server() as target:
        for concurrency in (1, 16):
            run = asyncio.run(closed_loop(target, requests, concurrency, args.duration))
            results[f"echo c={concurrency}"] = run.summary()
    with gateway(REPOSITORY) as (target, _):
        for concurrency in (1, 16):
            run = asyncio.run(closed_loop(target, requests, concurrency, args.duration))
            results[f"gateway c={concurrency}"] = run.summary()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| configuration | requests/s | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['throughput_rps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")


if __name__ == "__main__":
    main()
