"""One served model: its backend, detectors, pipeline and batcher, composed once at load time."""

from __future__ import annotations

import asyncio
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
from guard.detection.baselines import Baselines, Factory
from guard.detection.detectors import Detector, build_detectors
from guard.detection.ensemble import Fisher
from guard.detection.pipeline import BatchResult, GuardPipeline
from guard.detection.verdicts import verdicts
from guard.protocol.errors import ConfigError, DetectorError, GuardError, InvalidInput
from guard.protocol.tensors import row_spans, rows_of
from guard.protocol.types import UNCHECKED, Verdict
from guard.serving.batching import DynamicBatcher
from guard.serving.cameras import CameraTracker
from guard.serving.host_calibration import calibrate_for_host
from guard.serving.logs import FailureLog
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
    if ensemble.threshold is None:  # read from a config that `guard calibrate` has yet to complete
        raise ConfigError(config.path, "ensemble.threshold", "a positive finite number (run `guard calibrate`)")
    try:
        combiner = Fisher.load(config.directory / ensemble.references, ensemble.threshold, ensemble.min_p_threshold)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: name the key, not a zipfile error
        raise ConfigError(
            config.path,
            "ensemble.references",
            f"a readable .npz of clean detector scores in "
            f"{config.directory} ({type(exc).__name__}: {exc}; re-run `guard calibrate`)",
            ensemble.references,
        ) from exc
    judges = sorted(d.name for d in detectors if not d.monitor)
    if sorted(combiner.references) != judges:
        raise ConfigError(
            config.path,
            "ensemble.references",
            f"clean scores of exactly the detectors {judges} (re-run `guard calibrate`)",
            sorted(combiner.references),
        )
    return combiner


def build_pipeline(
    config: ModelConfig, backend: Backend, detectors: list[Detector], device: torch.device
) -> GuardPipeline:
    preprocessor = None
    if config.preprocess is not None:
        source = next(s for s in config.inputs if s.name == config.preprocess.input)
        preprocessor = config.preprocess.build(source)
    d = config.detection
    return GuardPipeline(
        backend,
        detectors,
        guarded_input=d.guarded_input,
        logits_output=d.logits_output,
        output_names=[s.name for s in config.outputs],
        device=device,
        features_output=d.features_output,
        preprocessor=preprocessor,
        boxes=d.boxes,
    )


def check_loadable(config: ModelConfig) -> None:
    """What the server checks when it loads a model, without serving it: the backend loads and
    agrees with the config, every detector finds its threshold and artifacts, the ensemble its
    references. Raises ConfigError naming the file and key."""
    detectors = build_detectors(
        config.path,
        config.detection.detectors,
        input_kind=config.guarded_kind,
        output_kind=config.detection.output_kind,
    )
    backend = build_backend(config.spec, config.backend, tuple(d.name for d in detectors if d.needs_features))
    try:
        check_against_backend(config, backend.signature(), f"the model ({backend.description})")
        load_combiner(config, detectors)
    finally:
        backend.close()


def camera_baselines(config: ModelConfig, detectors: list[Detector], derived: Factory | None) -> Baselines | None:
    """The model's per-camera baselines ([cameras.baseline]), on the factory statistics derived at
    load when the host recalibrated, else the config's."""
    cameras = config.cameras
    if cameras.baseline is None:
        return None
    factory = derived or cameras.factory
    key = "cameras.baseline.factory"
    if factory is None:
        raise ConfigError(
            config.path,
            key,
            "each detector's clean [location, spread, reach] (run `guard calibrate` with the model's cameras)",
        )
    missing = sorted(set(cameras.baseline.judged([d.name for d in detectors])) - set(factory.location))
    if missing:
        raise ConfigError(
            config.path,
            key,
            f"an entry for every detector (missing {missing}; run `guard calibrate`)",
            sorted(factory.location),
        )
    return Baselines(cameras.baseline, factory, cameras.max_cameras, target=config.detection.target_fpr)


class ModelRuntime:
    def __init__(
        self,
        config: ModelConfig,
        metrics: ModelMetrics,
        backend: Backend | None = None,
        calibration_mode: str | None = None,
    ):
        """calibration_mode overrides the model's [calibration] mode (guard serve --calibration)."""
        self.config = config
        self.metrics = metrics
        self.device = select_device(config.detection.device)
        self.detectors: list[Detector] = [
            d.to(self.device)
            for d in build_detectors(
                config.path,
                config.detection.detectors,
                input_kind=config.guarded_kind,
                output_kind=config.detection.output_kind,
            )
        ]
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
            log.warning(
                "%s: the detectors run on %s and the backend on %s: every batch crosses between them "
                "(set the model's `device` and the backend's alike)",
                config.name,
                self.device,
                backend.device,
            )
        # Requests that pass the local check are answered by forward_to (remote forward_clean).
        self.upstream: Backend | None = backend.forward_to
        self.pipeline = build_pipeline(config, backend, self.detectors, self.device)
        # Plain passthrough for fail-open: the original rows only, no variants.
        self._passthrough = build_pipeline(config, backend, [], self.device)
        self._executor = ThreadPoolExecutor(config.batching.instances, thread_name_prefix=f"guard-{config.name}")
        batching = config.batching
        if backend.waits_on_network or (self.upstream is not None and self.upstream.waits_on_network):
            batching = dataclasses.replace(batching, inline_below_microseconds=0)  # never on the event loop
        self.batcher = DynamicBatcher(
            self._execute_submitted, batching, metrics, self._executor, flow_limit=config.cameras.max_queued
        )
        self.cameras = CameraTracker(config.cameras, forget=metrics.forget_camera)
        try:
            self.combiner, self.host_calibration = calibrate_for_host(
                config,
                backend,
                self.detectors,
                load_combiner(config, self.detectors),
                self.device,
                lambda detectors: build_pipeline(config, backend, detectors, self.device),
                calibration_mode,
            )
            self.baselines = camera_baselines(config, self.detectors, self.host_calibration.factory)
        except BaseException:
            # A reload that fails leaves the old copy serving and may be retried: each failed try
            # must not keep a backend session and its threads.
            self._executor.shutdown(wait=False)
            backend.close()
            if self.upstream is not None:
                self.upstream.close()
            raise
        self._started = False
        self._active = 0
        # Broken detectors fail every batch: one traceback, then a count (guard.serving.logs).
        self._fail_open_log = FailureLog(
            log, f"{config.name}: detectors failed; serving unchecked (fail_open)", level=logging.WARNING
        )
        self._idle = asyncio.Event()
        """Set while no request is on this copy."""
        self._idle.set()

    @property
    def ready(self) -> bool:
        """Started, and the backends can run (a remote upstream follows its own health)."""
        return self._started and self.backend.ready and (self.upstream is None or self.upstream.ready)

    async def start(self) -> None:
        self._started = True
        self.publish_metrics()

    def publish_metrics(self) -> None:
        """The gauges that describe this copy of the model; set when it starts serving, not when it
        is built, since a reload builds the new copy while the old one still serves."""
        m, name = self.metrics, self.config.name
        m.calibration(self.host_calibration)
        for detector in self.detectors:
            m.m.detector_threshold.labels(name, detector.name).set(detector.calibrated_threshold())
        m.m.queue_capacity.labels(name).set(self.config.batching.max_queue_size)
        # Every model has the camera counts (0 without baselines), so dashboards and alerts on
        # them see each model, not only those with per-camera baselines.
        m.m.cameras_warm.labels(name).set(0 if self.baselines is None else self.baselines.warm)
        m.m.cameras_over_target.labels(name).set(0 if self.baselines is None else self.baselines.over_target)

    def enter(self) -> None:
        """One request more on this copy (the data plane calls it right after routing)."""
        self._active += 1
        self._idle.clear()

    def leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    @property
    def active(self) -> int:
        """Requests routed to this copy and not yet answered."""
        return self._active

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request is on this copy; False when `timeout` passed first."""
        if self._active == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float | None = None) -> None:
        """Stop serving: what is queued still runs (up to `timeout` seconds, then it fails with
        UNAVAILABLE), then the threads and the backend close."""
        self._started = False
        if not await self.batcher.close(timeout):
            # A batch still runs on a worker thread past the timeout: leave it, and the backend it
            # uses, to finish on their own rather than block the stop or close a session under it.
            log.warning("%s: a batch was still running when the model closed; not waiting for it", self.config.name)
            self._executor.shutdown(wait=False, cancel_futures=True)
            return
        # Joining the worker threads blocks: not on the event loop, which other models still use.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.backend.close()
        if self.upstream is not None:
            self.upstream.close()

    async def infer(
        self, inputs: dict[str, np.ndarray], rows: int, deadline: float | None, camera: str | None = None
    ) -> RowsResult:
        result = await self.batcher.submit((inputs, camera), rows, deadline, flow=camera)
        if isinstance(result, GuardError):  # forward_clean: this request's upstream call failed
            raise result
        return result

    def _execute_submitted(
        self, submitted: list[tuple[dict[str, np.ndarray], str | None]], deadline: float | None = None
    ) -> list[RowsResult | GuardError]:
        return self.execute([inputs for inputs, _ in submitted], deadline, [camera for _, camera in submitted])

    def execute(
        self,
        requests: list[dict[str, np.ndarray]],
        deadline: float | None = None,
        cameras: list[str | None] | None = None,
    ) -> list[RowsResult | GuardError]:
        """One batch, synchronously (on a worker thread or the loop thread; see DynamicBatcher).
        `deadline` is the batch's latest: the call is worth finishing while any request waits.
        `cameras`: each request's camera_id (or None), for per-camera baselines.
        Requests whose shapes differ on a variable dimension run as separate groups."""
        flows: list[str | None] = cameras or [None] * len(requests)
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(self.pipeline.shape_key(request), []).append(i)
        results: dict[int, RowsResult | GuardError] = {}
        for members in groups.values():
            results.update(
                zip(members, self._execute_group([requests[i] for i in members], deadline, [flows[i] for i in members]))
            )
        return [results[i] for i in range(len(requests))]

    def _execute_group(
        self, requests: list[dict[str, np.ndarray]], deadline: float | None, cameras: list[str | None]
    ) -> list[RowsResult | GuardError]:
        with torch.inference_mode():
            prepared = self.pipeline.prepare(requests)
            results: dict[int, RowsResult | GuardError] = {i: InvalidInput(why) for i, why in prepared.failed.items()}
            if not prepared.kept:
                return [results[i] for i in range(len(requests))]  # each failed its own preprocessing
            kept = [requests[i] for i in prepared.kept]
            try:
                result = self.pipeline.run(prepared.inputs, deadline)
            except DetectorError as exc:
                if not self.config.fail_open:
                    raise
                self._fail_open_log(exc)
                result = self._passthrough.run(self._passthrough.prepare(kept).inputs, deadline)
                result.scores = {}
        spans = row_spans([rows_of(r) for r in kept])
        flows = [cameras[i] for i in prepared.kept]
        if result.scores or not self.detectors:
            judged = self._judge(result.scores, spans, flows)
        else:
            judged = [Verdict(UNCHECKED, 0.0) for _ in spans]
        self._observe(result)
        served = [
            RowsResult({n: v[span] for n, v in result.outputs.items()}, verdict) for span, verdict in zip(spans, judged)
        ]
        answers = served if self.upstream is None else self._forward_clean(self.upstream, kept, served, deadline)
        results.update(zip(prepared.kept, answers))
        return [results[i] for i in range(len(requests))]

    def _judge(self, scores: dict[str, np.ndarray], spans: list[slice], flows: list[str | None]) -> list[Verdict]:
        """Verdicts; with per-camera baselines, each camera's rows are judged against its baseline,
        which then takes the frame in (guard.detection.baselines)."""
        if self.baselines is None or not scores or not any(flows):
            return verdicts(self.detectors, scores, spans, self.combiner)
        judged = verdicts(self.detectors, self.baselines.normalise(flows, spans, scores), spans, self.combiner)
        for camera, span, verdict in zip(flows, spans, judged):
            if camera is not None:  # the request's worst row, raw: what the baseline is made of
                self.baselines.observe(camera, {n: float(np.max(v[span])) for n, v in scores.items()}, verdict.flagged)
        return judged

    def _observe(self, result: BatchResult) -> None:
        for stage, seconds in result.timings.items():
            self.metrics.stage(stage, seconds)
        self.metrics.backend_rows(result.rows_sent)

    def _forward_clean(
        self, upstream: Backend, requests: list[dict[str, np.ndarray]], served: list[RowsResult], deadline: float | None
    ) -> list[RowsResult | GuardError]:
        """Requests that passed the local check go upstream in ONE call and take its outputs; the
        upstream never sees a flagged request, which keeps the local copy's outputs (under enforce
        the data plane blocks it anyway). When the upstream fails, only the forwarded requests
        fail: flagged ones still get their verdicts."""
        answers: list[RowsResult | GuardError] = list(served)
        passed = [i for i, r in enumerate(served) if not r.verdict.flagged]
        if not passed:
            return answers
        merged = {n: np.concatenate([requests[i][n] for i in passed]) for n in requests[0]}
        start = time.perf_counter()
        try:
            outputs = upstream.infer(merged, [s.name for s in self.config.outputs], deadline)
        except GuardError as exc:
            for i in passed:
                answers[i] = exc
            return answers
        finally:
            self.metrics.stage("upstream", time.perf_counter() - start)
        for i, span in zip(passed, row_spans([rows_of(requests[i]) for i in passed])):
            answers[i] = RowsResult({n: v[span] for n, v in outputs.items()}, served[i].verdict)
        return answers
