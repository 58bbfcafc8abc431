"""One served model: its backend, detectors, pipeline and batcher, composed once at load time."""

from __future__ import annotations

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
from guard.ensemble import Fisher
from guard.errors import ConfigError, DetectorError
from guard.metrics import ModelMetrics
from guard.pipeline import GuardPipeline, verdicts
from guard.types import UNCHECKED, Verdict

log = logging.getLogger("guard.runtime")


@dataclass
class RowsResult:
    """One request's share of a batch: its output rows and its verdict."""

    outputs: dict[str, np.ndarray]
    verdict: Verdict


def load_combiner(config: ModelConfig, detectors: list[Detector]) -> Fisher | None:
    """The model's Fisher combination, checked against its detectors; None for a union."""
    if config.ensemble.method != "fisher":
        return None
    path = config.directory / "config.toml"
    combiner = Fisher.load(config.directory / config.ensemble.references, config.ensemble.threshold)
    judges = sorted(d.name for d in detectors if not d.monitor)
    if sorted(combiner.references) != judges:
        raise ConfigError(path, "ensemble.references", f"clean scores of exactly the detectors {judges} "
                          "(re-run `guard calibrate`)", sorted(combiner.references))
    return combiner


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
        self.batcher = DynamicBatcher(self.execute, config.batching, metrics, self._executor)
        self.combiner = load_combiner(config, self.detectors)
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

    def execute(self, requests: list[dict[str, np.ndarray]], deadline: float | None = None) -> list[RowsResult]:
        """One batch, synchronously (on a worker thread or the loop thread; see DynamicBatcher)."""
        names = requests[0].keys()
        # A copy even for one request: decoded raw inputs are read-only views of the message.
        merged = {n: np.concatenate([r[n] for r in requests]) for n in names}
        with torch.inference_mode():
            try:
                result = self.pipeline.run(merged)
            except DetectorError:
                if not self.config.fail_open:
                    raise
                log.exception("detectors failed; serving unchecked (fail_open)")
                result = self._passthrough.run(merged)
                result.scores = {}
        spans, start = [], 0
        for request in requests:
            size = next(iter(request.values())).shape[0]
            spans.append(slice(start, start + size))
            start += size
        if result.scores or not self.detectors:
            judged = verdicts(self.detectors, result.scores, spans, self.combiner)
        else:
            judged = [Verdict(UNCHECKED, 0.0) for _ in spans]
        for stage, seconds in result.timings.items():
            self.metrics.stage(stage, seconds)
        self.metrics.backend_rows(result.rows_sent)
        return [RowsResult({n: v[span] for n, v in result.outputs.items()}, verdict)
                for span, verdict in zip(spans, judged)]
