"""Frames through system shared memory against the same frames inline, on one gateway.

    python -m benchmarks.shared_memory [--duration 6] [--concurrency 1 4] [--out results/shared_memory.json]

One `guard serve` process (its own GIL) serves a throwaway repository: a model taking FP32
[N, 3, 416, 416] (2 MiB a frame, a 416x416 detector's input) that averages each channel and maps
the three means to 10 logits, with no detectors. The model and the guard cost next to nothing, so
the figures show what moving a frame costs, which is what shared memory changes.

Closed loop at each concurrency, the same frames (8 random ones, in turn) both ways; each worker
puts every frame where the gateway will read it, as a camera's new frame would be:
- inline: the frame is copied into a ModelInferRequest (raw_input_contents) and sent;
- shm: the frame is copied into the worker's own registered region (2 MiB), and a request naming
  the region is sent (the gateway copies it out when it decodes the request).
Latency runs from taking the frame to having the answer. Printed: frames/s, p50 and p99 per mode,
and shm / inline ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper

from benchmarks.gateway_process import start_gateway
from guard.protocol.proto import inference_pb2 as pb

SHAPE = (1, 3, 416, 416)
FRAME_BYTES = int(np.prod(SHAPE)) * 4
CONFIG = """name = "frames"
version = "1"
platform = "onnxruntime_onnx"
policy = "flag"
guarded_input = "input"
logits_output = "logits"

[[inputs]]
name = "input"
datatype = "FP32"
shape = [3, 416, 416]

[[outputs]]
name = "logits"
datatype = "FP32"
shape = [10]

[batching]
max_batch_size = 8
max_queue_delay_microseconds = 0

[backend]
intra_op_threads = 1
inter_op_threads = 1
"""


def write_repository(root: Path) -> Path:
    """A model of next to no cost: per-channel means (GlobalAveragePool), then a 3x10 MatMul."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 10], np.linspace(-1, 1, 30, dtype=np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["means"]),
            helper.make_node("MatMul", ["means", "w"], ["logits"]),
        ],
        "frames",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE[1:]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [weights],
    )
    entry = root / "frames"
    entry.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), entry / "model.onnx")
    (entry / "config.toml").write_text(CONFIG)
    return root


def _call(channel: grpc.aio.Channel, method: str, response=pb.ModelInferResponse):
    return channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response.FromString,
    )


def inline_request(frame: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="frames", raw_input_contents=[frame.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=list(SHAPE))
    return request


def region_request(region: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="frames")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(SHAPE))
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = FRAME_BYTES
    return request


async def closed_loop(
    target: str,
    frames: list[np.ndarray],
    mode: str,
    concurrency: int,
    duration: float,
    regions: list[shared_memory.SharedMemory],
    warmup: float = 0.5,
) -> dict[str, float]:
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        infer = _call(channel, "ModelInfer")

        async def worker(index: int, until: float, record: bool) -> None:
            view = np.ndarray(SHAPE, np.float32, buffer=regions[index].buf)
            request = region_request(f"bench-{index}")  # the same few bytes every time
            i = index
            while time.perf_counter() < until:
                frame = frames[i % len(frames)]
                i += 1
                start = time.perf_counter()
                if mode == "inline":
                    await infer(inline_request(frame))
                else:
                    np.copyto(view, frame)
                    await infer(request)
                if record:
                    latencies.append(time.perf_counter() - start)
            del view  # the region's buffer must have no exports when it is closed

        await asyncio.gather(*(worker(k, time.perf_counter() + warmup, False) for k in range(concurrency)))
        start = time.perf_counter()
        await asyncio.gather(*(worker(k, start + duration, True) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3
    return {
        "frames_per_s": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "frames": len(lat),
    }


async def register(target: str, regions: list[shared_memory.SharedMemory]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = _call(channel, "SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterResponse)
        for index, region in enumerate(regions):
            await call(
                pb.SystemSharedMemoryRegisterRequest(
                    name=f"bench-{index}", key=f"/{region.name}", byte_size=FRAME_BYTES
                )
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path, default=Path("results/shared_memory.json"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    frames = [rng.random(SHAPE, dtype=np.float32) for _ in range(8)]
    regions = [
        shared_memory.SharedMemory(f"guard-bench-{os.getpid()}-{k}", create=True, size=FRAME_BYTES)
        for k in range(max(args.concurrency))
    ]
    results: dict[str, dict[str, float]] = {}
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            start_gateway(write_repository(Path(tmp)), "--shared-memory") as gateway,
        ):
            asyncio.run(register(gateway.target, regions))
            for concurrency in args.concurrency:
                for mode in ("inline", "shm"):
                    results[f"{mode} c={concurrency}"] = asyncio.run(
                        closed_loop(gateway.target, frames, mode, concurrency, args.duration, regions)
                    )
    finally:
        for region in regions:
            region.close()
            region.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"FP32 {list(SHAPE)} frames ({FRAME_BYTES / 2**20:.1f} MiB), {args.duration:g} s per row\n")
    print("| mode | concurrency | frames/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for name, r in results.items():
        mode, concurrency = name.split(" c=")
        print(f"| {mode} | {concurrency} | {r['frames_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    print("\n| concurrency | frames/s shm / inline | p50 shm / inline | p99 shm / inline |\n|---|---|---|---|")
    for concurrency in args.concurrency:
        a, b = results[f"shm c={concurrency}"], results[f"inline c={concurrency}"]
        print(
            f"| {concurrency} | {a['frames_per_s'] / b['frames_per_s']:.2f} | {a['p50_ms'] / b['p50_ms']:.2f} | "
            f"{a['p99_ms'] / b['p99_ms']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
