"""One served model: its parts (guard.serving.composition) behind a batcher, the requests on this
copy, and its life from start to close."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from guard.backends.base import Backend
from guard.protocol.errors import GuardError
from guard.serving.batching import DynamicBatcher
from guard.serving.cameras import CameraTracker
from guard.serving.composition import (
    ModelParts,
    build_pipeline,
    camera_baselines,
    check_loadable,
    compose,
    load_combiner,
)
from guard.serving.execution import BatchExecution, RowsResult
from guard.serving.fail_open import FailOpen
from guard.serving.forwarding import CleanForwarder
from guard.serving.in_flight import InFlight
from guard.serving.judging import Judge
from guard.serving.metrics import ModelMetrics
from guard.serving.model_config import BatchingConfig, ModelConfig
from guard.serving.recorder import RuntimeRecorder

# Composition lives in guard.serving.composition; guard.tools, guard.api and tests import it from here.
__all__ = ["ModelRuntime", "RowsResult", "build_pipeline", "camera_baselines", "check_loadable", "load_combiner"]

log = logging.getLogger("guard.serving")


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
        self.parts = parts = compose(config, backend, calibration_mode)
        # The parts the data plane, reloads, tests and benchmarks read by name.
        self.device, self.detectors, self.backend = parts.device, parts.detectors, parts.backend
        self.upstream, self.pipeline = parts.upstream, parts.pipeline
        self.combiner, self.host_calibration, self.baselines = parts.combiner, parts.host_calibration, parts.baselines
        self._recorder = RuntimeRecorder(config, metrics)
        self._execution = BatchExecution(
            parts.pipeline,
            FailOpen(config, parts.pipeline, parts.passthrough),
            Judge(parts.detectors, parts.combiner, parts.baselines),
            self._recorder,
            None if parts.upstream is None else CleanForwarder(parts.upstream, config, self._recorder),
        )
        self._executor = ThreadPoolExecutor(config.batching.instances, thread_name_prefix=f"guard-{config.name}")
        self.batcher = DynamicBatcher(
            self._execute_submitted,
            _batching(config.batching, parts),
            metrics,
            self._executor,
            flow_limit=config.cameras.max_queued,
        )
        self.cameras = CameraTracker(config.cameras, forget=metrics.forget_camera)
        self._in_flight = InFlight()
        self._started = False

    @property
    def ready(self) -> bool:
        """Started, and the backends can run (a remote upstream follows its own health)."""
        return self._started and self.backend.ready and (self.upstream is None or self.upstream.ready)

    async def start(self) -> None:
        self._started = True
        self.publish_metrics()

    def publish_metrics(self) -> None:
        """The gauges that describe this copy (guard.serving.recorder)."""
        self._recorder.publish(self.parts)

    def enter(self) -> None:
        """One request more on this copy (the data plane calls it right after routing)."""
        self._in_flight.enter()

    def leave(self) -> None:
        self._in_flight.leave()

    @property
    def active(self) -> int:
        """Requests routed to this copy and not yet answered."""
        return self._in_flight.count

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request is on this copy; False when `timeout` passed first."""
        return await self._in_flight.wait_idle(timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Stop serving: what is queued still runs (up to `timeout` seconds, then it fails with
        UNAVAILABLE), then the threads and the backend close."""
        self._started = False
        closed = await self.batcher.close(timeout)
        self._execution.flush_logs()  # failures of the last seconds reach the log too
        if not closed:
            # A batch still runs on a worker thread past the timeout: leave it, and the backend it
            # uses, to finish on their own rather than block the stop or close a session under it.
            log.warning("%s: a batch was still running when the model closed; not waiting for it", self.config.name)
            self._executor.shutdown(wait=False, cancel_futures=True)
            return
        # Joining the worker threads blocks: not on the event loop, which other models still use.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.parts.close()

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        deadline: float | None,
        camera: str | None = None,
        deadline_what: str = "deadline",
    ) -> RowsResult:
        """deadline_what: what the deadline is, for its DEADLINE_EXCEEDED message (guard.serving.deadlines)."""
        result = await self.batcher.submit((inputs, camera), rows, deadline, flow=camera, deadline_what=deadline_what)
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
        """One batch, synchronously (guard.serving.execution), outside the batcher: benchmarks and
        tests call it directly."""
        return self._execution.run(requests, deadline, cameras)


def _batching(batching: BatchingConfig, parts: ModelParts) -> BatchingConfig:
    """A backend that waits on the network never runs on the event loop, however fast it is."""
    upstream = parts.upstream
    if parts.backend.waits_on_network or (upstream is not None and upstream.waits_on_network):
        return dataclasses.replace(batching, inline_below_microseconds=0)
    return batching
