"""The torch backend against ONNX Runtime on the demo models: agreement and per-batch latency.

    python -m benchmarks.torch_backend [--repeats 200] [--threads 1] [--cpu-compile]

For each demo model (digits: INT8 QDQ, digits_fp32) it prints the largest |difference| of the logits
and of the features output between each torch configuration and ONNX Runtime on the CPU, over the
held-out digits, then the median and p90 time of one backend call at several batch sizes, every
configuration measured in the same loop (round robin, so they share the host's noise), with the
ratio to ONNX Runtime. Rows: 3 = one request through the demo guard (the original and its two
squeezed variants), 96 = a full batch of 32 requests. ONNX Runtime takes and returns host numpy
arrays; the torch backend takes and returns tensors already on its device (what the guard pipeline
passes it), and CUDA timings synchronise after each call. Configurations: ONNX Runtime CPU, torch
eager CPU, and where CUDA is present torch eager and reduce-overhead (CUDA graphs) on CUDA plus
ONNX Runtime's CUDA provider when it loads. `--cpu-compile` adds torch.compile on the CPU (slow to
compile, off by default as in the backend). Figures are this host's; no timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from benchmarks.repositories import load_split
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.backends.torch_runtime import TorchBackend

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "digits (INT8 QDQ)": ROOT / "examples/guard_examples/repository/digits/model.onnx",
    "digits_fp32": ROOT / "examples/guard_examples/repository/digits_fp32/model.onnx",
}
FEATURES = "/fc/fc.1/Relu_output_0"
BATCHES = (1, 3, 96)


class Subject:
    """One backend configuration: how to feed it a batch and wait for its answer."""

    def __init__(self, name: str, backend, device: torch.device | None):
        self.name, self.backend, self.device = name, backend, device

    def feed(self, x: np.ndarray):
        if self.device is None:
            return {"input": x}
        return {"input": torch.from_numpy(np.array(x)).to(self.device)}

    def call(self, feeds, names=("logits",)):
        with torch.inference_mode():  # as the runtime runs the pipeline
            out = self.backend.infer(feeds, list(names))
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def numpy(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self.call(self.feed(x), ("logits", FEATURES))
        return {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def subjects(model: Path, threads: int, cpu_compile: bool) -> list[Subject]:
    cpu = torch.device("cpu")
    found = [
        Subject("onnxruntime cpu", OnnxRuntimeBackend.open(model, providers=("cpu",), intra_op_threads=threads), None),
        Subject("torch cpu eager", TorchBackend.open(model, features_output=FEATURES, device="cpu"), cpu),
    ]
    if cpu_compile:
        found.append(
            Subject(
                "torch cpu compile=default",
                TorchBackend.open(model, features_output=FEATURES, device="cpu", compile="default"),
                cpu,
            )
        )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        found.append(
            Subject("torch cuda eager", TorchBackend.open(model, features_output=FEATURES, device="cuda"), gpu)
        )
        found.append(
            Subject(
                "torch cuda reduce-overhead",
                TorchBackend.open(model, features_output=FEATURES, device="cuda", compile="reduce-overhead"),
                gpu,
            )
        )
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            found.append(Subject("onnxruntime cuda", OnnxRuntimeBackend.open(model, providers=("cuda", "cpu")), None))
    return found


def agreement(found: list[Subject], x: np.ndarray) -> None:
    reference = found[0].numpy(x)
    for subject in found[1:]:
        got = subject.numpy(x)
        logits = float(np.abs(got["logits"] - reference["logits"]).max())
        features = float(np.abs(got[FEATURES] - reference[FEATURES]).max())
        top1 = float((got["logits"].argmax(1) == reference["logits"].argmax(1)).mean())
        print(
            f"  {subject.name:28s} max|logit diff| {logits:.3g}  max|features diff| {features:.3g}  "
            f"top-1 agreement {top1:.4f}  ({subject.backend.description})"
        )


def latency(found: list[Subject], x: np.ndarray, repeats: int) -> None:
    print(f"  {'rows':>4s}  " + "  ".join(f"{s.name:>28s}" for s in found))
    for rows in BATCHES:
        batch = np.ascontiguousarray(np.resize(x, (rows, *x.shape[1:])))
        feeds = [s.feed(batch) for s in found]
        for s, f in zip(found, feeds):  # warm-up: first-call allocations, cuDNN plans, graph recording
            for _ in range(3):
                s.call(f)
        times = [[] for _ in found]
        for _ in range(repeats):
            for i, (s, f) in enumerate(zip(found, feeds)):
                start = time.perf_counter()
                s.call(f)
                times[i].append(time.perf_counter() - start)
        medians = [float(np.median(t)) for t in times]
        cells = [
            f"{m * 1e3:8.3f} ms p90 {np.percentile(t, 90) * 1e3:7.3f} x{m / medians[0]:5.2f}"
            for m, t in zip(medians, times)
        ]
        print(f"  {rows:4d}  " + "  ".join(f"{c:>28s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both (the demo configs use 1)")
    parser.add_argument("--cpu-compile", action="store_true", help="also torch.compile on the CPU (slow to build)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = np.ascontiguousarray(load_split("test")[0])
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} CPU thread(s), "
        f"CUDA {'available: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'absent'}"
    )
    for label, model in MODELS.items():
        found = subjects(model, args.threads, args.cpu_compile)
        print(f"\n{label}: agreement with {found[0].name} over {len(x)} held-out digits")
        agreement(found, x)
        print(f"{label}: per-batch latency, median over {args.repeats} calls (x = ratio to {found[0].name})")
        latency(found, x, args.repeats)


if __name__ == "__main__":
    main()
