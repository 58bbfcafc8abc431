"""The compute floor: the same ONNX file in this process through ONNX Runtime, no gRPC, no guard,
on the batch sizes the gateway runs and with the gateway's backend threading."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from guard.serving.model_config import ModelConfig


def session_for(config: ModelConfig) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.backend.settings.intra_op_threads
    options.inter_op_num_threads = config.backend.settings.inter_op_threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(config.model_file), options, providers=["CPUExecutionProvider"])


def ort_floor(
    session: ort.InferenceSession, output: str, rows: np.ndarray, batch: int, duration: float, warmup: int = 3
) -> dict:
    """Back-to-back calls on `batch` rows drawn from `rows`: calls/s, rows/s, p50/p99 per call."""
    name = session.get_inputs()[0].name
    batches = [
        np.ascontiguousarray(np.resize(np.roll(rows, -i, axis=0), (batch, *rows.shape[1:])))
        for i in range(min(8, len(rows)))
    ]
    for x in batches[:warmup]:
        session.run([output], {name: x})
    latencies, start = [], time.perf_counter()
    while (now := time.perf_counter()) - start < duration or len(latencies) < 3:
        session.run([output], {name: batches[len(latencies) % len(batches)]})
        latencies.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3
    return {
        "batch": batch,
        "calls_per_s": len(lat) / elapsed,
        "rows_per_s": batch * len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }
