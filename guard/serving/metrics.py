"""Prometheus metrics on a registry the server owns, served on their own HTTP port.

Names and labels are a contract with dashboards and alerts (see docs/metrics.md).
"""

from __future__ import annotations

import contextlib
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from guard.serving.statistics import InferenceStatistics

# Sub-millisecond resolution at the bottom: a pass-through request costs well under 1 ms.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Scores are raw detector scores (L1 distances lie in [0, 2]; others grow without bound).
SCORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 100.0)


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, publish_thresholds: bool = False):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "guard_requests_total",
            "Inference requests by verdict and status code.",
            ["model", "verdict", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "guard_request_duration_seconds",
            "End-to-end request latency inside the gateway.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "guard_stage_duration_seconds",
            "Time per pipeline stage (queue, squeeze, backend, detect).",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "guard_batch_size",
            "Rows of original inputs per backend batch.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("guard_queue_depth", "Requests waiting in the model's queue.", ["model"], registry=r)
        self.queue_capacity = Gauge(
            "guard_queue_capacity", "The model's max_queue_size (0 = unbounded).", ["model"], registry=r
        )
        self.detector_score = Histogram(
            "guard_detector_score",
            "Raw detector scores per request.",
            ["model", "detector"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        # A threshold tells an attacker how far an input can be pushed before it is flagged, and
        # /metrics is easier to reach than the model directory: published only when asked
        # (guard serve --publish-thresholds). Unpublished, the gauge still exists (a reload sets and
        # drops its series alike) but no registry holds it, so no scrape shows it.
        self.detector_threshold = Gauge(
            "guard_detector_threshold",
            "Calibrated threshold per detector.",
            ["model", "detector"],
            registry=r if publish_thresholds else None,
        )
        self.flagged = Counter(
            "guard_flagged_total", "Requests flagged, by the detector that fired.", ["model", "detector"], registry=r
        )
        self.calibration_info = Gauge(
            "guard_calibration_info",
            "1 for the runtime fingerprint a model's thresholds "
            "hold on and whether they were derived again on this host at load.",
            ["model", "fingerprint", "recalibrated"],
            registry=r,
        )
        self.calibration_flag_rate = Gauge(
            "guard_calibration_clean_flag_rate",
            "Share of the model's clean references its thresholds flag, when derived on this host.",
            ["model"],
            registry=r,
        )
        self.calibration_seconds = Gauge(
            "guard_calibration_seconds",
            "Seconds spent deriving the model's thresholds at load (0 when the stored ones held).",
            ["model"],
            registry=r,
        )
        self.backend_rows = Counter(
            "guard_backend_rows_total",
            "Rows sent to the backend, originals and detector variants.",
            ["model"],
            registry=r,
        )
        self.model_loads = Counter(
            "guard_model_loads_total",
            "Model loads at startup and reloads (SIGHUP, "
            "RepositoryModelLoad), by result: success or failure (the old copy kept serving).",
            ["model", "result"],
            registry=r,
        )
        # The quarantine (guard serve --quarantine): every request offered is counted in one of the two.
        self.quarantine_records = Counter(
            "guard_quarantine_records_total",
            "Requests kept in the quarantine: committed (fsynced) to its store.",
            ["model"],
            registry=r,
        )
        self.quarantine_dropped = Counter(
            "guard_quarantine_dropped_total",
            "Requests the quarantine did not keep: buffer_full, write_error, too_large or closed.",
            ["model", "reason"],
            registry=r,
        )

        # Per-client state (guard.serving.query_watch): never an identity label, values come from clients.
        self.client_flagged = Counter(
            "guard_client_flagged_total",
            "Times a client identity was flagged, by reason (query_attack).",
            ["model", "reason"],
            registry=r,
        )
        self.camera_alerts = Counter(
            "guard_camera_alerts_total",
            "Times a camera entered alert: [cameras] alert_flags of its last alert_window verdicts flagged.",
            ["model"],
            registry=r,
        )
        self.cameras_in_alert = Gauge("guard_cameras_in_alert", "Cameras in alert now.", ["model"], registry=r)
        # Opt-in ([cameras] per_camera_metrics): label values come from clients.
        self.camera_requests = Counter(
            "guard_camera_requests_total", "Checked requests per camera.", ["model", "camera"], registry=r
        )
        self.camera_flagged = Counter(
            "guard_camera_flagged_total", "Flagged requests per camera.", ["model", "camera"], registry=r
        )
        # Per-camera baselines ([cameras.baseline]): counts without a camera label, always bounded...
        self.cameras_warm = Gauge(
            "guard_cameras_baseline_warm", "Cameras past their baseline's warm-up.", ["model"], registry=r
        )
        self.cameras_over_target = Gauge(
            "guard_cameras_over_target",
            "Cameras whose clean-flag-rate estimate is "
            "significantly above the model's target (95% lower bound above it).",
            ["model"],
            registry=r,
        )
        # ...and per camera, opt-in like the counters above.
        self.camera_flag_rate = Gauge(
            "guard_camera_flag_rate",
            "A camera's share of flagged frames over its last [cameras.baseline] rate_window frames.",
            ["model", "camera"],
            registry=r,
        )
        self.camera_drift = Gauge(
            "guard_camera_baseline_drift",
            "How far a camera's baseline moved since its warm-up, in its own spreads (largest detector).",
            ["model", "camera"],
            registry=r,
        )
        self.statistics: dict[str, InferenceStatistics] = {}
        """Per model, Triton-style running totals (ModelStatistics); they outlive reloads, as the
        Prometheus series do."""

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)

    def serve(self, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
        """Start /metrics on host:port (0 picks a free port; read it from server.server_port)."""
        return start_http_server(port, addr=host, registry=self.registry)


class ModelMetrics:
    """The metrics of one model, pre-labelled; also the batcher's observer.

    Labelled children are looked up once and cached: `labels()` costs more than the update.
    """

    def __init__(self, metrics: GuardMetrics, model: str):
        self.m, self.model = metrics, model
        self._depth = metrics.queue_depth.labels(model)
        self._batch = metrics.batch_size.labels(model)
        self._duration = metrics.request_duration.labels(model)
        self._backend_rows = metrics.backend_rows.labels(model)
        self.statistics = metrics.statistics.setdefault(model, InferenceStatistics())
        self._stages: dict[str, Histogram] = {}
        self._requests: dict[tuple[str, str], Counter] = {}
        self._scores: dict[str, Histogram] = {}
        self._flagged: dict[str, Counter] = {}

    def camera(self, camera: str, flagged: bool, per_camera: bool, entered_alert: bool, in_alert: int) -> None:
        if entered_alert:
            self.m.camera_alerts.labels(self.model).inc()
        self.m.cameras_in_alert.labels(self.model).set(in_alert)
        if per_camera:
            self.m.camera_requests.labels(self.model, camera).inc()
            if flagged:
                self.m.camera_flagged.labels(self.model, camera).inc()

    def baseline(
        self, camera: str, flag_rate: float, drift: float, warm: int, over_target: int, per_camera: bool
    ) -> None:
        self.m.cameras_warm.labels(self.model).set(warm)
        self.m.cameras_over_target.labels(self.model).set(over_target)
        if per_camera:
            self.m.camera_flag_rate.labels(self.model, camera).set(flag_rate)
            self.m.camera_drift.labels(self.model, camera).set(drift)

    def forget_camera(self, camera: str) -> None:
        """Drop a camera's series once it is no longer tracked, so they stay bounded."""
        for family in (self.m.camera_requests, self.m.camera_flagged, self.m.camera_flag_rate, self.m.camera_drift):
            with contextlib.suppress(KeyError):  # never had a series: per-camera metrics off, or never flagged
                family.remove(self.model, camera)

    def calibration(self, host) -> None:
        """host: guard.serving.host_calibration.HostCalibration."""
        self.m.calibration_info.labels(self.model, host.fingerprint, host.recalibrated).set(1)
        self.m.calibration_seconds.labels(self.model).set(host.seconds)
        if host.clean_flag_rate is not None:
            self.m.calibration_flag_rate.labels(self.model).set(host.clean_flag_rate)

    def queue_depth(self, requests: int) -> None:
        self._depth.set(requests)

    def queue_wait(self, seconds: float) -> None:
        self.stage("queue", seconds)
        self.statistics.queued(seconds)

    def batch(self, rows: int) -> None:
        self._batch.observe(rows)

    def backend_rows(self, rows: int) -> None:
        self._backend_rows.inc(rows)

    def stage(self, stage: str, seconds: float) -> None:
        child = self._stages.get(stage) or self._stages.setdefault(
            stage, self.m.stage_duration.labels(self.model, stage)
        )
        child.observe(seconds)

    def request(self, verdict: str, code: str, seconds: float) -> None:
        key = (verdict, code)
        child = self._requests.get(key) or self._requests.setdefault(
            key, self.m.requests.labels(self.model, verdict, code)
        )
        child.inc()
        self._duration.observe(seconds)
        self.statistics.request(code == "OK", seconds)

    def scores(self, scores: dict[str, float], flagged_by: tuple[str, ...]) -> None:
        for detector, value in scores.items():
            child = self._scores.get(detector) or self._scores.setdefault(
                detector, self.m.detector_score.labels(self.model, detector)
            )
            child.observe(value)
        for detector in flagged_by:
            counter = self._flagged.get(detector) or self._flagged.setdefault(
                detector, self.m.flagged.labels(self.model, detector)
            )
            counter.inc()
