"""Typed model configuration, read once from a repository entry's `config.toml`.

Every field is validated on load; a bad value raises ConfigError naming the file, the dotted key
and what was expected. Detector tables are kept raw here and validated by each detector type
(see guard.detectors), so adding a detector needs no change in this module.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard.errors import ConfigError
from guard.tensors import DATATYPES

POLICIES = ("enforce", "flag", "shadow")
PROVIDERS = ("tensorrt", "cuda", "cpu")
DEVICES = ("auto", "cpu", "cuda")
BACKEND_KINDS = ("onnxruntime", "remote")
REMOTE_MODES = ("through", "forward_clean")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """Shape of one item, batch dimension excluded; -1 marks a variable dimension."""
    range: tuple[float, float] | None = None
    """Inclusive value range every element must lie in; None accepts any finite value."""
    layout: str = ""
    """Informational, e.g. NCHW; squeezers assume channels come first."""


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    """Most rows (summed over requests) in one backend call for the original inputs."""
    max_queue_delay_microseconds: int = 0
    """How long the first queued request may wait for others to join its batch."""
    max_queue_size: int = 1024
    """Queued requests beyond this are rejected with UNAVAILABLE at once (0 = unbounded)."""
    default_timeout_microseconds: int = 0
    """Queue timeout for requests that set none (0 = none); a request may only lower it."""
    instances: int = 1
    """Batches that may run at the same time (each on its own worker thread)."""
    inline_below_microseconds: int = 500
    """With one instance, batches averaging less than this run on the event loop thread (0 = never)."""


@dataclass(frozen=True)
class TensorRTConfig:
    fp16: bool = False
    int8: bool = False
    engine_cache_dir: str = ""
    """Where built engines are cached across restarts ("" = no cache)."""


@dataclass(frozen=True)
class TLSConfig:
    ca: Path | None = None
    """PEM roots that sign the upstream's certificate (None = the system's roots)."""
    cert: Path | None = None
    """PEM client certificate for mutual TLS (with `key`)."""
    key: Path | None = None
    server_name: str = ""
    """Overrides the name checked against the upstream's certificate ("" = the target's host)."""


@dataclass(frozen=True)
class RemoteConfig:
    """A KServe v2 gRPC upstream (Triton, MLServer, KServe, another guard) that runs the model."""

    target: str
    """host:port of the upstream's gRPC endpoint (any gRPC target, e.g. dns:///svc:8001)."""
    model: str
    """The model's name upstream (default: this model's name)."""
    version: str = ""
    """The upstream model version ("" = the upstream's default)."""
    mode: str = "through"
    """through: original + detector variants go upstream as one batch; forward_clean: a local copy
    (model_file) runs the detectors and only requests that pass are forwarded."""
    timeout_s: float = 10.0
    """Longest an upstream call may take; a request's own remaining deadline shortens it."""
    max_batch: int = 0
    """Most rows per upstream call (0 = no limit when the upstream takes a batch dimension)."""
    connect_retries: int = 1
    """Retries of a call that failed to connect (never sent); calls that may have run are never retried."""
    circuit_failures: int = 3
    """Consecutive connection failures that open the circuit breaker."""
    circuit_reset_s: float = 0.25
    """How long an open circuit fails calls at once before letting one probe call through."""
    health_interval_s: float = 0.5
    """Period of the upstream readiness probe (a third of it while the upstream is down)."""
    tls: TLSConfig | None = None
    """None = plaintext."""


@dataclass(frozen=True)
class BackendConfig:
    kind: str = "onnxruntime"
    """onnxruntime (in process) or remote (an upstream server, see `remote`)."""
    remote: RemoteConfig | None = None
    providers: tuple[str, ...] = PROVIDERS
    """Execution providers in order of preference; only those that load are used."""
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)


@dataclass(frozen=True)
class EnsembleConfig:
    method: str = "union"
    """How detectors combine: "union" (any detector over its threshold), "fisher" or "omnibus"
    (guard.ensemble)."""
    references: str = "ensemble.npz"
    """fisher: the detectors' clean calibration scores, a file in the model directory."""
    threshold: float | None = None
    """fisher, omnibus: the threshold on Fisher's statistic."""
    min_p_threshold: float | None = None
    """omnibus: the threshold on -log of the smallest p-value."""


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
    model_file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    guarded_input: str
    """The input the detectors examine (the image); other inputs are passed through."""
    logits_output: str
    features_output: str | None = None
    """An extra model output with penultimate features, for feature-space detectors; internal
    (never returned to clients). `guard calibrate` adds it to the model when a detector needs it."""
    version: str = "1"
    platform: str = "onnxruntime_onnx"
    policy: str = "flag"
    target_fpr: float = 0.05
    fail_open: bool = False
    """If true, a request whose check failed is still served (verdict `unchecked`)."""
    device: str = "auto"
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    detectors: tuple[dict[str, Any], ...] = ()
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    scan: ScanGateConfig = field(default_factory=ScanGateConfig)

    @property
    def runs_locally(self) -> bool:
        """Whether model_file is loaded here (in process, or as forward_clean's local copy)."""
        remote = self.backend.remote
        return remote is None or remote.mode == "forward_clean"

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)


class _Reader:
    """Reads typed values out of a TOML table, remembering the key path for error messages."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = ""):
        self.path, self.table, self.prefix = path, table, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, expected: str, got: object = None) -> ConfigError:
        return ConfigError(self.path, self.key(name), expected, got)

    def get(self, name: str, kind: type, default: Any = ..., expected: str = "") -> Any:
        if name not in self.table:
            if default is ...:
                raise ConfigError(self.path, self.key(name), f"{expected or kind.__name__} (missing)")
            return default
        value = self.table[name]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail(name, expected or f"a {kind.__name__}", value)
        return value

    def positive(self, name: str, default: int, allow_zero: bool = False) -> int:
        value = self.get(name, int, default)
        if value < 0 or (value == 0 and not allow_zero):
            raise self.fail(name, "a non-negative integer" if allow_zero else "a positive integer", value)
        return value

    def choice(self, name: str, options: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(name, str, default)
        if value not in options:
            raise self.fail(name, "one of " + ", ".join(options), value)
        return value

    def sub(self, name: str) -> "_Reader":
        return _Reader(self.path, self.get(name, dict, {}, "a table"), f"{self.key(name)}.")

    def unknown(self, known: set[str]) -> None:
        extra = sorted(set(self.table) - known)
        if extra:
            raise self.fail(extra[0], "a known key (" + ", ".join(sorted(known)) + ")")


def _tensor(reader: _Reader, entry: object, where: str) -> TensorSpec:
    if not isinstance(entry, dict):
        raise reader.fail(where, "a table with name, datatype and shape", entry)
    r = _Reader(reader.path, entry, f"{where}.")
    r.unknown({"name", "datatype", "shape", "range", "layout"})
    shape = r.get("shape", list, expected="a list of dimensions (batch excluded)")
    if not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in shape):
        raise r.fail("shape", "positive integers or -1", shape)
    value_range = r.get("range", list, None)
    if value_range is not None:
        if (len(value_range) != 2 or not all(isinstance(v, (int, float)) for v in value_range)
                or not all(math.isfinite(v) for v in value_range) or value_range[0] > value_range[1]):
            raise r.fail("range", "[low, high] with finite low <= high", value_range)
        value_range = (float(value_range[0]), float(value_range[1]))
    return TensorSpec(
        name=r.get("name", str), datatype=r.choice("datatype", DATATYPES), shape=tuple(shape),
        range=value_range, layout=r.get("layout", str, ""),
    )


def _tensors(reader: _Reader, key: str) -> tuple[TensorSpec, ...]:
    entries = reader.get(key, list, expected=f"a list of [[{key}]] tables")
    if not entries:
        raise reader.fail(key, "at least one tensor")
    specs = tuple(_tensor(reader, entry, f"{key}[{i}]") for i, entry in enumerate(entries))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise reader.fail(key, "unique tensor names", names)
    return specs


def _batching(r: _Reader) -> BatchingConfig:
    r.unknown(set(BatchingConfig.__dataclass_fields__))
    d = BatchingConfig()
    return BatchingConfig(
        max_batch_size=r.positive("max_batch_size", d.max_batch_size),
        max_queue_delay_microseconds=r.positive("max_queue_delay_microseconds", 0, allow_zero=True),
        max_queue_size=r.positive("max_queue_size", d.max_queue_size, allow_zero=True),
        default_timeout_microseconds=r.positive("default_timeout_microseconds", 0, allow_zero=True),
        instances=r.positive("instances", d.instances),
        inline_below_microseconds=r.positive("inline_below_microseconds", d.inline_below_microseconds,
                                             allow_zero=True),
    )


REMOTE_KEYS = {"target", "model", "version", "mode", "timeout_s", "max_batch", "connect_retries",
               "circuit_failures", "circuit_reset_s", "health_interval_s", "tls"}


def _positive_float(r: _Reader, name: str, default: float) -> float:
    value = r.get(name, float, default)
    if not (math.isfinite(value) and value > 0):
        raise r.fail(name, "a positive number of seconds", value)
    return value


def _tls(r: _Reader, directory: Path) -> TLSConfig | None:
    if not r.table:
        return None
    r.unknown({"ca", "cert", "key", "server_name"})
    files = {}
    for name in ("ca", "cert", "key"):
        value = r.get(name, str, None)
        if value is not None:
            files[name] = directory / value
            if not files[name].is_file():
                raise r.fail(name, f"a PEM file (relative to {directory})", value)
    if ("cert" in files) != ("key" in files):
        raise r.fail("cert" if "key" in files else "key", "cert and key together (mutual TLS)")
    return TLSConfig(files.get("ca"), files.get("cert"), files.get("key"), r.get("server_name", str, ""))


def _remote(r: _Reader, model_name: str, directory: Path) -> RemoteConfig:
    target = r.get("target", str, expected="the upstream's gRPC address, host:port")
    if not target:
        raise r.fail("target", "the upstream's gRPC address, host:port", target)
    d = RemoteConfig(target, model_name)
    return RemoteConfig(
        target=target, model=r.get("model", str, model_name), version=r.get("version", str, ""),
        mode=r.choice("mode", REMOTE_MODES, d.mode), timeout_s=_positive_float(r, "timeout_s", d.timeout_s),
        max_batch=r.positive("max_batch", 0, allow_zero=True),
        connect_retries=r.positive("connect_retries", d.connect_retries, allow_zero=True),
        circuit_failures=r.positive("circuit_failures", d.circuit_failures),
        circuit_reset_s=_positive_float(r, "circuit_reset_s", d.circuit_reset_s),
        health_interval_s=_positive_float(r, "health_interval_s", d.health_interval_s),
        tls=_tls(r.sub("tls"), directory),
    )


def _backend(r: _Reader, model_name: str, directory: Path) -> BackendConfig:
    kind = r.choice("kind", BACKEND_KINDS, "onnxruntime")
    local = {"providers", "intra_op_threads", "inter_op_threads", "tensorrt"}
    # Remote keys under kind = "onnxruntime" would be ignored silently: reject them instead.
    r.unknown({"kind", *local, *(REMOTE_KEYS if kind == "remote" else ())})
    providers = r.get("providers", list, list(PROVIDERS))
    for provider in providers:
        if provider not in PROVIDERS:
            raise r.fail("providers", "a list drawn from " + ", ".join(PROVIDERS), providers)
    trt = r.sub("tensorrt")
    trt.unknown({"fp16", "int8", "engine_cache_dir"})
    return BackendConfig(
        kind=kind, remote=_remote(r, model_name, directory) if kind == "remote" else None,
        providers=tuple(providers),
        intra_op_threads=r.positive("intra_op_threads", 1, allow_zero=True),
        inter_op_threads=r.positive("inter_op_threads", 1, allow_zero=True),
        tensorrt=TensorRTConfig(trt.get("fp16", bool, False), trt.get("int8", bool, False),
                                trt.get("engine_cache_dir", str, "")),
    )


TOP_LEVEL_KEYS = {
    "name", "version", "platform", "model_file", "policy", "target_fpr", "fail_open", "device",
    "guarded_input", "logits_output", "features_output", "inputs", "outputs", "batching", "backend", "detectors",
    "ensemble", "scan",
}


def _ensemble(r: _Reader, directory: Path) -> EnsembleConfig:
    r.unknown({"method", "references", "threshold", "min_p_threshold"})
    method = r.choice("method", ("union", "fisher", "omnibus"), "union")
    if method == "union":
        return EnsembleConfig()
    references = r.get("references", str, "ensemble.npz")
    if not (directory / references).is_file():
        raise r.fail("references", f"a file in {directory} (run `guard calibrate`)", references)
    thresholds = {}
    for key in ("threshold", "min_p_threshold") if method == "omnibus" else ("threshold",):
        value = r.get(key, float, expected="a calibrated threshold (run `guard calibrate`)")
        if not (math.isfinite(value) and value > 0):
            raise r.fail(key, "a positive finite number", value)
        thresholds[key] = value
    return EnsembleConfig(method, references, thresholds["threshold"], thresholds.get("min_p_threshold"))


def load_model_config(directory: Path) -> ModelConfig:
    """Read and validate `directory/config.toml`; the model's name is the directory's name."""
    path = directory / "config.toml"
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "a config.toml in the model directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", f"valid TOML ({exc})") from None
    r = _Reader(path, table)
    r.unknown(TOP_LEVEL_KEYS)
    name = r.get("name", str, directory.name)
    if name != directory.name:
        raise r.fail("name", f"the directory's name {directory.name!r}", name)
    backend = _backend(r.sub("backend"), name, directory)
    model_file = directory / r.get("model_file", str, "model.onnx")
    # In remote `through` mode the upstream runs the model: no local copy is needed.
    if not model_file.is_file() and (backend.remote is None or backend.remote.mode == "forward_clean"):
        raise r.fail("model_file", f"an existing file in {directory}", model_file.name)
    inputs, outputs = _tensors(r, "inputs"), _tensors(r, "outputs")
    guarded = r.get("guarded_input", str, inputs[0].name)
    if guarded not in {s.name for s in inputs}:
        raise r.fail("guarded_input", "the name of one of [[inputs]]", guarded)
    logits = r.get("logits_output", str, outputs[0].name)
    if logits not in {s.name for s in outputs}:
        raise r.fail("logits_output", "the name of one of [[outputs]]", logits)
    features = r.get("features_output", str, None)
    if features is not None and features in {s.name for s in outputs}:
        raise r.fail("features_output", "an internal output not listed in [[outputs]]", features)
    target_fpr = r.get("target_fpr", float, 0.05)
    if not 0.0 < target_fpr < 1.0:
        raise r.fail("target_fpr", "a rate strictly between 0 and 1", target_fpr)
    detectors = r.get("detectors", list, [], "a list of [[detectors]] tables")
    for i, entry in enumerate(detectors):
        if not isinstance(entry, dict):
            raise r.fail(f"detectors[{i}]", "a table", entry)
    return ModelConfig(
        name=name, directory=directory, model_file=model_file, inputs=inputs, outputs=outputs,
        guarded_input=guarded, logits_output=logits, features_output=features, version=str(r.get("version", str, "1")),
        platform=r.get("platform", str, "onnxruntime_onnx"), policy=r.choice("policy", POLICIES, "flag"),
        target_fpr=target_fpr, fail_open=r.get("fail_open", bool, False),
        device=r.choice("device", DEVICES, "auto"), batching=_batching(r.sub("batching")),
        backend=backend, detectors=tuple(detectors),
        ensemble=_ensemble(r.sub("ensemble"), directory), scan=_scan_gate(r.sub("scan")),
    )


def _scan_gate(r: _Reader) -> ScanGateConfig:
    r.unknown(set(ScanGateConfig.__dataclass_fields__))
    return ScanGateConfig(report=r.get("report", str, "scan.json"), require_clean=r.get("require_clean", bool, False))
