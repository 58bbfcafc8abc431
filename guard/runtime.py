"""One served model: its backend, detectors, pipeline and batcher, composed once at load time."""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from guard.backends import build_backends
from guard.backends.base import Backend
from guard.batching import DynamicBatcher
from guard.config import ModelConfig
from guard.detectors import Detector, build_detectors
from guard.device import select_device
from guard.ensemble import Fisher
from guard.errors import ConfigError, DetectorError, GuardError
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
    """The model's Fisher (or omnibus) combination, checked against its detectors; None for a union."""
    if config.ensemble.method == "union":
        return None
    path = config.directory / "config.toml"
    combiner = Fisher.load(config.directory / config.ensemble.references, config.ensemble.threshold,
                           config.ensemble.min_p_threshold)
    judges = sorted(d.name for d in detectors if not d.monitor)
    if sorted(combiner.references) != judges:
        raise ConfigError(path, "ensemble.references", f"clean scores of exactly the detectors {judges} "
                          "(re-run `guard calibrate`)", sorted(combiner.references))
    return combiner


class ModelRuntime:
    def __init__(self, config: ModelConfig, metrics: ModelMetrics, backend: Backend | None = None):
        self.config = config
        self.metrics = metrics
        self.device = select_device(config.device)
        self.detectors: list[Detector] = [
            d.to(self.device) for d in build_detectors(config.directory / "config.toml", config.detectors)]
        # upstream: set in remote forward_clean mode, where clean requests go after the local check.
        self.upstream: Backend | None = None
        if backend is None:
            backend, self.upstream = build_backends(
                config, tuple(d.name for d in self.detectors if d.needs_features))
        self.backend = backend
        self.pipeline = GuardPipeline(
            self.backend, self.detectors, config.guarded_input, config.logits_output,
            [spec.name for spec in config.outputs], self.device, config.features_output)
        # Plain passthrough for fail-open: the original rows only, no variants.
        self._passthrough = GuardPipeline(self.backend, [], config.guarded_input, config.logits_output,
                                          [spec.name for spec in config.outputs], self.device)
        self._executor = ThreadPoolExecutor(config.batching.instances, thread_name_prefix=f"guard-{config.name}")
        batching = config.batching
        if config.backend.kind == "remote":  # network calls never run on the event loop thread
            batching = dataclasses.replace(batching, inline_below_microseconds=0)
        self.batcher = DynamicBatcher(self.execute, batching, metrics, self._executor)
        self.combiner = load_combiner(config, self.detectors)
        for detector in self.detectors:
            metrics.m.detector_threshold.labels(config.name, detector.name).set(detector.threshold)
        metrics.m.queue_capacity.labels(config.name).set(config.batching.max_queue_size)
        self._started = False

    @property
    def ready(self) -> bool:
        """Started, and the backends can run (a remote upstream follows its own health)."""
        return self._started and self.backend.ready and (self.upstream is None or self.upstream.ready)

    async def start(self) -> None:
        self.batcher.start()
        self._started = True

    async def close(self) -> None:
        self._started = False
        await self.batcher.close()
        self._executor.shutdown(wait=True)
        self.backend.close()
        if self.upstream is not None:
            self.upstream.close()

    async def infer(self, inputs: dict[str, np.ndarray], rows: int, deadline: float | None) -> RowsResult:
        result = await self.batcher.submit(inputs, rows, deadline)
        if isinstance(result, GuardError):  # forward_clean: this request's upstream call failed
            raise result
        return result

    def execute(self, requests: list[dict[str, np.ndarray]], deadline: float | None = None
                ) -> list[RowsResult | GuardError]:
        """One batch, synchronously (on a worker thread or the loop thread; see DynamicBatcher).
        `deadline` is the batch's latest: the call is worth finishing while any request waits."""
        names = requests[0].keys()
        # A copy even for one request: decoded raw inputs are read-only views of the message.
        merged = {n: np.concatenate([r[n] for r in requests]) for n in names}
        with torch.inference_mode():
            try:
                result = self.pipeline.run(merged, deadline)
            except DetectorError:
                if not self.config.fail_open:
                    raise
                log.exception("detectors failed; serving unchecked (fail_open)")
                result = self._passthrough.run(merged, deadline)
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
        results = [RowsResult({n: v[span] for n, v in result.outputs.items()}, verdict)
                   for span, verdict in zip(spans, judged)]
        if self.upstream is not None:
            self._forward_clean(requests, merged, results, deadline)
        return results

    def _forward_clean(self, requests: list[dict[str, np.ndarray]], merged: dict[str, np.ndarray],
                       results: list[RowsResult | GuardError], deadline: float | None) -> None:
        """Requests that passed the local check go upstream in ONE call and take its outputs; the
        upstream never sees a flagged request, which keeps the local copy's outputs (under enforce
        the data plane blocks it anyway). When the upstream fails, only the forwarded requests
        fail: flagged ones still get their verdicts."""
        passed = [i for i, r in enumerate(results) if not r.verdict.flagged]
        if not passed:
            return
        if len(passed) < len(requests):
            merged = {n: np.concatenate([requests[i][n] for i in passed]) for n in merged}
        start = time.perf_counter()
        try:
            outputs = self.upstream.infer(merged, [s.name for s in self.config.outputs], deadline)
        except GuardError as exc:
            for i in passed:
                results[i] = exc
            return
        finally:
            self.metrics.stage("upstream", time.perf_counter() - start)
        offset = 0
        for i in passed:
            size = next(iter(requests[i].values())).shape[0]
            results[i] = RowsResult({n: v[offset:offset + size] for n, v in outputs.items()}, results[i].verdict)
            offset += size
