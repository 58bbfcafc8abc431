"""A served model's config.toml, read once and validated on load.

Each part is read by the layer that owns it: the client contract ([[inputs]], [[outputs]]) and
the optional [preprocess] step by guard.protocol.spec and guard.detection.preprocess, the
[backend] table by the backend its `kind` names (guard.backends), the detectors and their
combination by guard.detection.settings, and batching, policy and the scan gate here. A bad value
raises ConfigError naming the file, the dotted key and what was expected.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from guard.backends import BackendSettings, read_backend_settings
from guard.detection import settings as detection
from guard.detection.calibration.settings import CalibrationSettings, read_calibration_settings
from guard.detection.detectors import build_detectors
from guard.detection.preprocess import PreprocessSettings, read_preprocess_settings
from guard.detection.settings import DetectionSettings, input_kind
from guard.protocol.errors import ConfigError
from guard.protocol.settings import TableReader
from guard.protocol.spec import ModelSpec, TensorSpec, read_tensors
from guard.serving.cameras import CameraSettings, read_camera_settings
from guard.serving.client_settings import ClientSettings, read_client_settings
from guard.serving.policy import POLICIES


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    """Most rows (summed over requests) in one backend call for the original inputs."""
    max_queue_delay_microseconds: int = 0
    """How long the first queued request may wait for others to join its batch."""
    max_queue_size: int = 1024
    """Queued requests beyond this are rejected with UNAVAILABLE at once (0 = unbounded)."""
    default_timeout_microseconds: int = 5_000_000
    """Queue timeout for requests that set none (0 = none); a request may only lower it. The
    default, 5 s, bounds how long an overloaded model lets requests wait: an answer later than
    that is useless to a camera at 10 frames/s and only holds memory."""
    instances: int = 1
    """Batches that may run at the same time (each on its own worker thread)."""
    inline_below_microseconds: int = 500
    """With one instance, batches averaging less than this run on the event loop thread (0 = never)."""


@dataclass(frozen=True)
class ScanGateConfig:
    report: str = "scan.json"
    """The model scan's JSON report (`guard scan-model` writes scan.json), relative to the model directory."""
    require_clean: bool = False
    """Refuse to load the model unless that report exists, is for this model file and is not flagged."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    directory: Path
    inputs: tuple[TensorSpec, ...]
    """What clients send (validated per request)."""
    outputs: tuple[TensorSpec, ...]
    backend: BackendSettings
    detection: DetectionSettings
    preprocess: PreprocessSettings | None = None
    version: str = "1"
    platform: str = "onnxruntime_onnx"
    policy: str = "flag"
    fail_open: bool = False
    """If true, a request whose check failed is still served (verdict `unchecked`)."""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    scan: ScanGateConfig = field(default_factory=ScanGateConfig)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    cameras: CameraSettings = field(default_factory=CameraSettings)
    clients: ClientSettings = field(default_factory=ClientSettings)
    """Per-identity limits ([clients], guard.serving.client_settings)."""

    @property
    def path(self) -> Path:
        return self.directory / "config.toml"

    @property
    def model_inputs(self) -> tuple[TensorSpec, ...]:
        """What the model takes: the client's inputs, with a preprocessed one replaced by its output."""
        if self.preprocess is None:
            return self.inputs
        source = next(s for s in self.inputs if s.name == self.preprocess.input)
        model = self.preprocess.build(source).model_specs()
        return (*model, *(s for s in self.inputs if s.name != source.name))

    @property
    def guarded_kind(self) -> str:
        """The kind of tensor the detectors examine (guard.detection.settings.input_kind)."""
        if self.preprocess is not None:
            source = next(s for s in self.inputs if s.name == self.preprocess.input)
            return input_kind(self.preprocess.build(source).guarded_spec())
        return input_kind(next(s for s in self.inputs if s.name == self.detection.guarded_input))

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(
            self.name, self.version, self.directory, self.model_inputs, self.outputs, self.detection.features_output
        )

    @property
    def model_file(self) -> Path | None:
        """The local model file, when a backend loads one."""
        files = self.backend.model_files
        return files[0] if files else None


def _batching(r: TableReader) -> BatchingConfig:
    r.unknown(set(BatchingConfig.__dataclass_fields__))
    d = BatchingConfig()
    return BatchingConfig(
        max_batch_size=r.positive("max_batch_size", d.max_batch_size),
        max_queue_delay_microseconds=r.positive("max_queue_delay_microseconds", 0, allow_zero=True),
        max_queue_size=r.positive("max_queue_size", d.max_queue_size, allow_zero=True),
        default_timeout_microseconds=r.positive(
            "default_timeout_microseconds", d.default_timeout_microseconds, allow_zero=True
        ),
        instances=r.positive("instances", d.instances),
        inline_below_microseconds=r.positive("inline_below_microseconds", d.inline_below_microseconds, allow_zero=True),
    )


def _scan_gate(r: TableReader) -> ScanGateConfig:
    r.unknown(set(ScanGateConfig.__dataclass_fields__))
    report = r.get("report", str, "scan.json")
    r.inside("report", report)  # checked whether or not the gate is on: no key names a file elsewhere
    return ScanGateConfig(report=report, require_clean=r.get("require_clean", bool, False))


TOP_LEVEL_KEYS = {
    "name",
    "version",
    "platform",
    "policy",
    "fail_open",
    "inputs",
    "outputs",
    "preprocess",
    "batching",
    "backend",
    "scan",
    "calibration",
    "cameras",
    "clients",
    *detection.KEYS,
}


def load_model_config(directory: Path, calibrated: bool = True) -> ModelConfig:
    """Read and validate `directory/config.toml`; the model's name is the directory's name.
    calibrated=False accepts a config whose thresholds and ensemble statistics are still to be
    written by `guard calibrate --model`."""
    path = directory / "config.toml"
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "a config.toml in the model directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", f"valid TOML ({exc})") from None
    r = TableReader(path, table)
    r.unknown(TOP_LEVEL_KEYS)
    name = r.get("name", str, directory.name)
    if name != directory.name:
        raise r.fail("name", f"the directory's name {directory.name!r}", name)
    inputs, outputs = read_tensors(r, "inputs"), read_tensors(r, "outputs")
    preprocess = read_preprocess_settings(r.sub("preprocess"), inputs)
    draft = ModelConfig(
        name,
        directory,
        inputs,
        outputs,
        read_backend_settings(r.sub("backend"), name),
        DetectionSettings(inputs[0].name, outputs[0].name),
        preprocess,
    )
    config = ModelConfig(
        name=name,
        directory=directory,
        inputs=inputs,
        outputs=outputs,
        backend=draft.backend,
        detection=detection.read_detection_settings(r, draft.model_inputs, outputs, calibrated),
        preprocess=preprocess,
        version=str(r.get("version", str, "1")),
        platform=r.get("platform", str, "onnxruntime_onnx"),
        policy=r.choice("policy", POLICIES, "flag"),
        fail_open=r.get("fail_open", bool, False),
        batching=_batching(r.sub("batching")),
        scan=_scan_gate(r.sub("scan")),
        calibration=read_calibration_settings(r.sub("calibration")),
        cameras=read_camera_settings(r.sub("cameras")),
        clients=read_client_settings(r.sub("clients")),
    )
    if config.clients.queries.queries.match == "distance":
        _check_distance_match(r.sub("clients"), config, calibrated)
    # Detector types and parameters are validated here, at load, against the input they examine.
    build_detectors(
        path,
        config.detection.detectors,
        require_threshold=False,
        input_kind=config.guarded_kind,
        output_kind=config.detection.output_kind,
    )
    return config


def _check_distance_match(r: TableReader, config: ModelConfig, calibrated: bool) -> None:
    """[clients] match = "distance" needs queries of one numeric size and, to serve, a distance."""
    preprocess = config.preprocess
    if preprocess is not None and preprocess.symbols:
        raise r.fail(
            "match",
            f'"hashes": a {preprocess.kind} model\'s queries are characters, which have no distance',
            "distance",
        )
    # Without a preprocessor the watch reads the guarded input as the client sent it.
    guarded = next((s for s in config.inputs if s.name == config.detection.guarded_input), None)
    if preprocess is None and guarded is not None and -1 in guarded.shape:
        # Queries of different sizes have no distance between them; a store keyed by size would let
        # a client reset its history by changing the size.
        expected = f"\"hashes\": input '{guarded.name}' has a free dimension, so its queries have no common size"
        raise r.fail("match", expected, "distance")
    if not config.clients.queries.queries.distance and calibrated:
        # No default: a distance is in the units of the model's inputs, derived from its clean data.
        raise r.fail("distance", "the model's own distance: run `guard calibrate --model DIR`")
