"""Per-model inference statistics in the shape of Triton's statistics extension (ModelStatistics):
what perf_analyzer and Model Analyzer read to split a request's latency into queue and compute.

Prometheus histograms (guard.serving.metrics) hold the same timings, but only as buckets and sums
per label set, and a request's success is a label of another family; these are exact running totals
kept beside them, updated from the same calls. Definitions, as close to Triton's as the guard's
stages allow:
- success / fail: requests that ended OK / with any other status, and their time in the gateway;
- queue: each request's wait in the model's batcher;
- compute_input / compute_infer / compute_output: each executed batch's `squeeze` (building the
  detectors' variants, preprocessing), `backend` (the model, variants included) and `detect`
  stages, counted once per request in the batch with the batch's time, as Triton counts them (a
  stage a model does not run, a pass-through's squeeze, counts with 0 ns: perf_analyzer requires
  the three counts to agree);
- inference_count / execution_count: rows of original inputs executed / batches executed;
- batch_stats: per batch size (original rows), its batches (each counted once) and their compute times;
- last_inference: when the latest request ended, in milliseconds since the epoch.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

COMPUTE_STAGES = {"squeeze": "compute_input", "backend": "compute_infer", "detect": "compute_output"}
"""The pipeline's batch stages (guard.detection.pipeline) and the Triton durations they count in."""


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, times: int = 1) -> None:
        self.count += times
        self.ns += times * int(seconds * 1e9)


@dataclass
class Compute:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def add(self, timings: dict[str, float], times: int = 1) -> None:
        for stage, name in COMPUTE_STAGES.items():
            getattr(self, name).add(timings.get(stage, 0.0), times)


@dataclass
class Snapshot:
    """A consistent copy of one model's totals (read under the lock)."""

    success: Duration
    fail: Duration
    queue: Duration
    compute: Compute
    inference_count: int
    execution_count: int
    last_inference_ms: int
    batches: dict[int, Compute]
    """Batch size -> its batches' compute durations (each batch counted once)."""


class InferenceStatistics:
    """One model's running totals; updated from the event loop and the model's worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._success, self._fail, self._queue = Duration(), Duration(), Duration()
        self._compute = Compute()
        self._inferences = self._executions = self._last_ms = 0
        self._batches: dict[int, Compute] = {}

    def request(self, ok: bool, seconds: float) -> None:
        with self._lock:
            (self._success if ok else self._fail).add(seconds)
            self._last_ms = int(time.time() * 1000)

    def queued(self, seconds: float) -> None:
        with self._lock:
            self._queue.add(seconds)

    def executed(self, rows: int, requests: int, timings: dict[str, float]) -> None:
        """One batch ran: `rows` original rows from `requests` requests, its stage `timings`."""
        with self._lock:
            self._inferences += rows
            self._executions += 1
            self._compute.add(timings, requests)
            self._batches.setdefault(rows, Compute()).add(timings)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return copy.deepcopy(
                Snapshot(
                    self._success,
                    self._fail,
                    self._queue,
                    self._compute,
                    self._inferences,
                    self._executions,
                    self._last_ms,
                    self._batches,
                )
            )
