"""What one copy of a model reports to the model's metrics (guard.serving.metrics): the gauges that
describe the copy, and each batch's stage timings and backend rows."""

from __future__ import annotations

from guard.detection.pipeline import BatchResult
from guard.serving.composition import ModelParts
from guard.serving.metrics import ModelMetrics
from guard.serving.model_config import ModelConfig


class RuntimeRecorder:
    def __init__(self, config: ModelConfig, metrics: ModelMetrics):
        self.config = config
        self.metrics = metrics

    def publish(self, parts: ModelParts) -> None:
        """The gauges that describe this copy of the model; set when it starts serving, not when it
        is built, since a reload builds the new copy while the old one still serves."""
        m, name = self.metrics, self.config.name
        m.calibration(parts.host_calibration)
        for detector in parts.detectors:
            m.m.detector_threshold.labels(name, detector.name).set(detector.calibrated_threshold())
        m.m.queue_capacity.labels(name).set(self.config.batching.max_queue_size)
        # Every model has the camera counts (0 without baselines), so dashboards and alerts on
        # them see each model, not only those with per-camera baselines.
        baselines = parts.baselines
        m.m.cameras_warm.labels(name).set(0 if baselines is None else baselines.warm)
        m.m.cameras_over_target.labels(name).set(0 if baselines is None else baselines.over_target)

    def batch(self, result: BatchResult, requests: int) -> None:
        """One executed batch: `requests` requests' rows, with `result`'s outputs and timings."""
        for stage, seconds in result.timings.items():
            self.metrics.stage(stage, seconds)
        self.metrics.backend_rows(result.rows_sent)
        rows = len(next(iter(result.outputs.values()))) if result.outputs else 0
        self.metrics.statistics.executed(rows, requests, result.timings)

    def upstream(self, seconds: float) -> None:
        """One forward_clean call to the upstream, failed or not."""
        self.metrics.stage("upstream", seconds)
