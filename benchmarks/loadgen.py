"""A KServe v2 gRPC load generator: closed loop at a fixed concurrency, or open loop at a fixed
request rate with Poisson arrivals. Requests are serialised once up front, so the client spends
its time on the wire, not on building messages."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from guard.protocol.proto import inference_pb2 as pb


@dataclass
class RunResult:
    latencies: list[float] = field(default_factory=list)
    """Seconds per successful request."""
    errors: collections.Counter = field(default_factory=collections.Counter)
    """Failed requests by gRPC status name."""
    elapsed: float = 0.0

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies) * 1e3
        ok = len(lat)
        return {
            "requests": ok + sum(self.errors.values()),
            "errors": dict(self.errors),
            "throughput_rps": ok / self.elapsed if self.elapsed else 0.0,
            **({f"p{q:g}_ms": float(np.percentile(lat, q)) for q in (50, 90, 99, 99.9)} if ok else {}),
        }


def infer_requests(model: str, input_name: str, batches: list[np.ndarray]) -> list[bytes]:
    """Serialised ModelInferRequests with raw FP32 contents, one per batch."""
    messages = []
    for x in batches:
        request = pb.ModelInferRequest(model_name=model, raw_input_contents=[np.ascontiguousarray(x).tobytes()])
        request.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
        messages.append(request.SerializeToString())
    return messages


def _call(channel: grpc.aio.Channel):
    # Pre-serialised requests: the request serializer is the identity.
    return channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


async def closed_loop(
    target: str, requests: list[bytes], concurrency: int, duration: float, warmup: float = 0.5, method=_call
) -> RunResult:
    """`concurrency` workers each send the next request as soon as the previous one returns."""
    result = RunResult()
    async with grpc.aio.insecure_channel(target) as channel:
        call = method(channel)
        stop_warmup = time.perf_counter() + warmup
        stop = stop_warmup + duration

        async def worker(offset: int) -> None:
            i = offset
            while (now := time.perf_counter()) < stop:
                try:
                    await call(requests[i % len(requests)], timeout=30)
                    if now >= stop_warmup:
                        result.latencies.append(time.perf_counter() - now)
                except grpc.aio.AioRpcError as exc:
                    if now >= stop_warmup:
                        result.errors[exc.code().name] += 1
                i += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        result.elapsed = time.perf_counter() - stop_warmup
    return result


async def open_loop(
    target: str, requests: list[bytes], rate: float, duration: float, seed: int = 0, method=_call
) -> RunResult:
    """Requests arrive as a Poisson process at `rate` per second, whatever the server's speed;
    latency counts from the scheduled arrival, so queueing in the client is not hidden."""
    result = RunResult()
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        call = method(channel)
        start = time.perf_counter()
        tasks, at, i = [], start, 0

        async def one(payload: bytes, scheduled: float) -> None:
            try:
                await call(payload, timeout=30)
                result.latencies.append(time.perf_counter() - scheduled)
            except grpc.aio.AioRpcError as exc:
                result.errors[exc.code().name] += 1

        while (at := at + rng.expovariate(rate)) < start + duration:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(requests[i % len(requests)], at)))
            i += 1
        await asyncio.gather(*tasks)
        result.elapsed = time.perf_counter() - start
    return result
