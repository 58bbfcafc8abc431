"""Text models: requests/s and p50/p99 of the guarded sentiment model, the same model passed
through, and the in-process floor, side by side in one run.

    python -m benchmarks.text [--concurrency 1 16] [--duration 10] [--out reports/text]

Needs the text repository (`make text-repository`). One `guard serve` process serves two entries
derived from build/text-repository/sentiment: `guard` (its calibrated text detectors, policy flag)
and `passthrough` (no detectors: tokenizing and the model only). Requests are real Rotten Tomatoes
snippets (the model's clean calibration references), one UTF-8 string per request, as a client
sends them, in a closed loop at each concurrency. The floor is the same ONNX file in this process,
no gRPC, no guard: the snippets tokenized and padded in batches of 1 and 16, so its requests/s are
what the model alone allows.
Every figure printed comes from this run; ratios compare figures of the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.gateway_process import start_gateway
from benchmarks.loadgen import closed_loop
from benchmarks.repositories import _derive
from guard.protocol.proto import inference_pb2 as pb
from guard.serving.model_config import load_model_config

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "build" / "text-repository" / "sentiment"
SNIPPETS = 256


def snippets(count: int = SNIPPETS) -> list[str]:
    """Clean Rotten Tomatoes snippets: the calibration references the repository's model keeps."""
    from guard.detection.calibration.references import References

    rows = References.load(SOURCE / "references.npz").inputs["text"].reshape(-1)[:count]
    return [bytes(v).decode("utf-8") for v in rows]


def text_requests(model: str, texts: list[str]) -> list[bytes]:
    """Serialised ModelInferRequests, one UTF-8 string each (BYTES [1, 1])."""
    messages = []
    for text in texts:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="text", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(text.encode())
        messages.append(request.SerializeToString())
    return messages


def floor(texts: list[str], batch: int, duration: float) -> dict[str, float]:
    """The model alone: tokenized and padded as the guard pads, ONNX Runtime with the gateway's threads."""
    from tokenizers import Tokenizer

    from benchmarks.floors import session_for

    config = load_model_config(SOURCE)
    session = session_for(config)
    tokenizer = Tokenizer.from_file(str(SOURCE / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_to_multiple_of=8)
    batches = []
    for start in range(0, len(texts) - batch + 1, batch):
        encodings = tokenizer.encode_batch(texts[start : start + batch])
        batches.append(
            {
                "input_ids": np.array([e.ids for e in encodings], np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
            }
        )
    latencies, begin = [], time.perf_counter()
    while (now := time.perf_counter()) - begin < duration or len(latencies) < 3:
        session.run(["logits"], batches[len(latencies) % len(batches)])
        latencies.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - begin
    lat = np.asarray(latencies) * 1e3
    return {
        "batch": batch,
        "throughput_rps": len(latencies) * batch / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def build_repository(target: Path) -> Path:
    if not (SOURCE / "config.toml").exists():
        raise SystemExit(f"{SOURCE} is missing: run `make text-repository` first")
    _derive(SOURCE, target, "guard", None, "flag")
    _derive(SOURCE, target, "passthrough", (), "flag")
    return target


def report(results: dict) -> str:
    lines = [
        "| entry | concurrency | requests/s | p50 ms | p99 ms | errors | requests/s vs passthrough |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, runs in results["gateway"].items():
        base = runs["passthrough"]["throughput_rps"]
        for name, s in runs.items():
            ratio = s["throughput_rps"] / base if base else float("nan")
            errors = ", ".join(f"{k} {v}" for k, v in sorted(s["errors"].items())) or "-"
            lines.append(
                f"| {name} | {c} | {s['throughput_rps']:.1f} | {s.get('p50_ms', float('nan')):.1f} | "
                f"{s.get('p99_ms', float('nan')):.1f} | {errors} | {ratio:.2f} |"
            )
    for f in results["floor"]:
        lines.append(
            f"| in-process floor (batch {f['batch']}) | - | {f['throughput_rps']:.1f} | {f['p50_ms']:.1f} | "
            f"{f['p99_ms']:.1f} | - | - |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("reports/text"))
    args = parser.parse_args(argv)
    texts = snippets()
    results: dict = {"snippets": len(texts), "duration_s": args.duration, "gateway": {}, "floor": []}
    with tempfile.TemporaryDirectory(prefix="guard-text-bench-") as scratch:
        repository = build_repository(Path(scratch) / "repository")
        with start_gateway(repository) as gateway:
            runs = [(c, name) for c in args.concurrency for name in ("passthrough", "guard")]
            for c, name in tqdm(runs, desc="closed loop", unit="run"):
                run = asyncio.run(closed_loop(gateway.target, text_requests(name, texts), c, args.duration))
                results["gateway"].setdefault(c, {})[name] = run.summary()
    results["floor"] = [floor(texts, batch, args.duration) for batch in (1, 16)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text.json").write_text(json.dumps(results, indent=1) + "\n")
    table = report(results)
    (args.out / "text.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
