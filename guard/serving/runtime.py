"""One served model: its backend, detectors, pipeline and batcher, composed once at load time."""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from guard.backends import build_backend
from guard.backends.base import Backend
from guard.backends.device import select_device
from guard.detection.detectors import Detector, build_detectors
from guard.detection.ensemble import Fisher
from guard.detection.pipeline import BatchResult, GuardPipeline
from guard.detection.verdicts import verdicts
from guard.protocol.errors import ConfigError, DetectorError, GuardError
from guard.protocol.tensors import row_spans, rows_of
from guard.protocol.types import UNCHECKED, Verdict
from guard.serving.batching import DynamicBatcher
from guard.serving.host_calibration import calibrate_for_host
from guard.serving.metrics import ModelMetrics
from guard.serving.model_config import ModelConfig
from guard.serving.repository import check_against_backend

log = logging.getLogger("guard.serving")


@dataclass
class RowsResult:
    """One request's share of a batch: its output rows and its verdict."""

    outputs: dict[str, np.ndarray]
    verdict: Verdict


def load_combiner(config: ModelConfig, detectors: list[Detector]) -> Fisher | None:
    """The model's Fisher (or omnibus) combination, checked against its detectors; None for a union."""
    ensemble = config.detection.ensemble
    if ensemble.method == "union":
        return None
    combiner = Fisher.load(config.directory / ensemble.references, ensemble.threshold, ensemble.min_p_threshold)
    judges = sorted(d.name for d in detectors if not d.monitor)
    if sorted(combiner.references) != judges:
        raise ConfigError(config.path, "ensemble.references", f"clean scores of exactly the detectors {judges} "
                          "(re-run `guard calibrate`)", sorted(combiner.references))
    return combiner


def build_pipeline(config: ModelConfig, backend: Backend, detectors: list[Detector],
                   device: torch.device) -> GuardPipeline:
    preprocessor = None
    if config.preprocess is not None:
        source = next(s for s in config.inputs if s.name == config.preprocess.input)
        preprocessor = config.preprocess.build(source)
    d = config.detection
    return GuardPipeline(backend, detectors, guarded_input=d.guarded_input, logits_output=d.logits_output,
                         output_names=[s.name for s in config.outputs], device=device,
                         features_output=d.features_output, preprocessor=preprocessor)


def check_loadable(config: ModelConfig) -> None:
    """What the server checks when it loads a model, without serving it: the backend loads and
    agrees with the config, every detector finds its threshold and artifacts, the ensemble its
    references. Raises ConfigError naming the file and key."""
    detectors = build_detectors(config.path, config.detection.detectors, input_kind=config.guarded_kind)
    backend = build_backend(config.spec, config.backend, tuple(d.name for d in detectors if d.needs_features))
    try:
        check_against_backend(config, backend.signature(), f"the model ({backend.description})")
        load_combiner(config, detectors)
    finally:
        backend.close()


class ModelRuntime:
    def __init__(self, config: ModelConfig, metrics: ModelMetrics, backend: Backend | None = None,
                 calibration_mode: str | None = None):
        """calibration_mode overrides the model's [calibration] mode (guard serve --calibration)."""
        self.config = config
        self.metrics = metrics
        self.device = select_device(config.detection.device)
        self.detectors: list[Detector] = [
            d.to(self.device) for d in build_detectors(config.path, config.detection.detectors,
                                                       input_kind=config.guarded_kind)]
        if backend is None:
            readers = tuple(d.name for d in self.detectors if d.needs_features)
            backend = build_backend(config.spec, config.backend, readers)
            try:
                check_against_backend(config, backend.signature(), f"the model ({backend.description})")
            except ConfigError:
                backend.close()
                raise
        self.backend = backend
        if backend.device is not None and backend.device.type != self.device.type:
            log.warning("%s: the detectors run on %s and the backend on %s: every batch crosses between them "
                        "(set the model's `device` and the backend's alike)", config.name, self.device, backend.device)
        # Requests that pass the local check are answered by forward_to (remote forward_clean).
        self.upstream: Backend | None = backend.forward_to
        self.pipeline = build_pipeline(config, backend, self.detectors, self.device)
        # Plain passthrough for fail-open: the original rows only, no variants.
        self._passthrough = build_pipeline(config, backend, [], self.device)
        self._executor = ThreadPoolExecutor(config.batching.instances, thread_name_prefix=f"guard-{config.name}")
        batching = config.batching
        if backend.waits_on_network or (self.upstream is not None and self.upstream.waits_on_network):
            batching = dataclasses.replace(batching, inline_below_microseconds=0)  # never on the event loop
        self.batcher = DynamicBatcher(self.execute, batching, metrics, self._executor)
        self.combiner, self.host_calibration = calibrate_for_host(
            config, backend, self.detectors, load_combiner(config, self.detectors), self.device,
            lambda detectors: build_pipeline(config, backend, detectors, self.device), calibration_mode)
        metrics.calibration(self.host_calibration)
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
        `deadline` is the batch's latest: the call is worth finishing while any request waits.
        Requests whose shapes differ on a variable dimension run as separate groups."""
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(self.pipeline.shape_key(request), []).append(i)
        results: list[RowsResult | GuardError | None] = [None] * len(requests)
        for members in groups.values():
            for i, result in zip(members, self._execute_group([requests[i] for i in members], deadline)):
                results[i] = result
        return results

    def _execute_group(self, requests: list[dict[str, np.ndarray]], deadline: float | None
                       ) -> list[RowsResult | GuardError]:
        with torch.inference_mode():
            try:
                result = self.pipeline.run(self.pipeline.batch(requests), deadline)
            except DetectorError:
                if not self.config.fail_open:
                    raise
                log.exception("detectors failed; serving unchecked (fail_open)")
                result = self._passthrough.run(self._passthrough.batch(requests), deadline)
                result.scores = {}
        spans = row_spans([rows_of(r) for r in requests])
        if result.scores or not self.detectors:
            judged = verdicts(self.detectors, result.scores, spans, self.combiner)
        else:
            judged = [Verdict(UNCHECKED, 0.0) for _ in spans]
        self._observe(result)
        results: list[RowsResult | GuardError] = [
            RowsResult({n: v[span] for n, v in result.outputs.items()}, verdict)
            for span, verdict in zip(spans, judged)]
        if self.upstream is not None:
            self._forward_clean(requests, results, deadline)
        return results

    def _observe(self, result: BatchResult) -> None:
        for stage, seconds in result.timings.items():
            self.metrics.stage(stage, seconds)
        self.metrics.backend_rows(result.rows_sent)

    def _forward_clean(self, requests: list[dict[str, np.ndarray]], results: list[RowsResult | GuardError],
                       deadline: float | None) -> None:
        """Requests that passed the local check go upstream in ONE call and take its outputs; the
        upstream never sees a flagged request, which keeps the local copy's outputs (under enforce
        the data plane blocks it anyway). When the upstream fails, only the forwarded requests
        fail: flagged ones still get their verdicts."""
        passed = [i for i, r in enumerate(results) if not r.verdict.flagged]
        if not passed:
            return
        merged = {n: np.concatenate([requests[i][n] for i in passed]) for n in requests[0]}
        start = time.perf_counter()
        try:
            outputs = self.upstream.infer(merged, [s.name for s in self.config.outputs], deadline)
        except GuardError as exc:
            for i in passed:
                results[i] = exc
            return
        finally:
            self.metrics.stage("upstream", time.perf_counter() - start)
        for i, span in zip(passed, row_spans([rows_of(requests[i]) for i in passed])):
            results[i] = RowsResult({n: v[span] for n, v in outputs.items()}, results[i].verdict)
