"""One served model: its backend, detectors, pipeline and batcher, composed once at load time."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from guard.backends.base import Backend
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.batching import DynamicBatcher
from guard.config import ModelConfig
from guard.detectors import Detector, build_detectors
from guard.device import select_device
from guard.errors import DetectorError
from guard.metrics import ModelMetrics
from guard.pipeline import BatchResult, GuardPipeline, verdicts
from guard.types import UNCHECKED, Verdict

log = logging.getLogger("guard.runtime")


@dataclass
class RowsResult:
    """One request's share of a batch: its output rows and its verdict."""

    outputs: dict[str, np.ndarray]
    verdict: Verdict


class ModelRuntime:
    def __init__(self, config: ModelConfig, metrics: ModelMetrics, backend: Backend | None = None):
        self.config = config
        self.metrics = metrics
        self.backend = backend or OnnxRuntimeBackend(config.model_file, config.backend)
        self.device = select_device(config.device)
        self.detectors: list[Detector] = [
            d.to(self.device) for d in build_detectors(config.directory / "config.toml", config.detectors)]
        self.pipeline = GuardPipeline(
            self.backend, self.detectors, config.guarded_input, config.logits_output,
            [spec.name for spec in config.outputs], self.device, config.features_output)
        # Plain passthrough for fail-open: the original rows only, no variants.
        self._passthrough = GuardPipeline(self.backend, [], config.guarded_input, config.logits_output,
                                          [spec.name for spec in config.outputs], self.device)
        self._executor = ThreadPoolExecutor(config.batching.instances, thread_name_prefix=f"guard-{config.name}")
        self.batcher = DynamicBatcher(self._execute, config.batching, metrics)
        for detector in self.detectors:
            metrics.m.detector_threshold.labels(config.name, detector.name).set(detector.threshold)
        metrics.m.queue_capacity.labels(config.name).set(config.batching.max_queue_size)
        self.ready = False

    async def start(self) -> None:
        self.batcher.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.batcher.close()
        self._executor.shutdown(wait=True)
        self.backend.close()

    async def infer(self, inputs: dict[str, np.ndarray], rows: int, deadline: float | None) -> RowsResult:
        return await self.batcher.submit(inputs, rows, deadline)

    async def _execute(self, requests: list[dict[str, np.ndarray]]) -> list[RowsResult]:
        names = requests[0].keys()
        # A copy even for one request: decoded raw inputs are read-only views of the message.
        merged = {n: np.concatenate([r[n] for r in requests]) for n in names}
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._run, self.pipeline, merged)
        except DetectorError:
            if not self.config.fail_open:
                raise
            log.exception("detectors failed; serving unchecked (fail_open)")
            result = await loop.run_in_executor(self._executor, self._run, self._passthrough, merged)
            result.scores = {}
        spans, start = [], 0
        for request in requests:
            size = next(iter(request.values())).shape[0]
            spans.append(slice(start, start + size))
            start += size
        if result.scores or not self.detectors:
            judged = verdicts(self.detectors, result.scores, spans)
        else:
            judged = [Verdict(UNCHECKED, 0.0) for _ in spans]
        for stage, seconds in result.timings.items():
            self.metrics.stage(stage, seconds)
        self.metrics.backend_rows(result.rows_sent)
        return [RowsResult({n: v[span] for n, v in result.outputs.items()}, verdict)
                for span, verdict in zip(spans, judged)]

    @staticmethod
    def _run(pipeline: GuardPipeline, merged: dict[str, np.ndarray]) -> BatchResult:
        with torch.inference_mode():
            return pipeline.run(merged)
