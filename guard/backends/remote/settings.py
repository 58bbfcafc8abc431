"""The remote backend's [backend] keys: where the upstream is, how long calls may take, how the
circuit breaker and the health probe behave, and TLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from guard.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeSettings
from guard.protocol.settings import TableReader

MODES = ("through", "forward_clean")


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
class RemoteSettings:
    """A KServe v2 gRPC upstream (Triton, MLServer, KServe, another guard) that runs the model."""

    target: str
    """host:port of the upstream's gRPC endpoint (any gRPC target, e.g. dns:///svc:8001)."""
    model: str
    """The model's name upstream (default: this model's name)."""
    version: str = ""
    """The upstream model version ("" = the upstream's default)."""
    mode: str = "through"
    """through: original + detector variants go upstream as one batch; forward_clean: a local copy
    (model_file, run by ONNX Runtime) runs the detectors and only requests that pass are forwarded."""
    timeout_s: float = 10.0
    """Longest an upstream call may take; a request's own remaining deadline shortens it."""
    max_batch: int = 0
    """Most rows per upstream call (0 = no limit when the upstream takes a batch dimension)."""
    connect_retries: int = 1
    """Retries of a call that failed to connect (never sent); calls that may have run are never retried."""
    circuit_failures: int = 3
    """Consecutive failures (connections, or no answer within timeout_s) that open the circuit breaker."""
    circuit_reset_s: float = 0.25
    """How long an open circuit fails calls at once before letting one probe call through."""
    health_interval_s: float = 0.5
    """Period of the upstream readiness probe (a third of it while the upstream is down)."""
    tls: TLSConfig | None = None
    """None = plaintext."""
    local: OnnxRuntimeSettings | None = None
    """forward_clean: the local copy that runs the detectors."""


KEYS = (
    "target",
    "model",
    "version",
    "mode",
    "timeout_s",
    "max_batch",
    "connect_retries",
    "circuit_failures",
    "circuit_reset_s",
    "health_interval_s",
    "tls",
)


def _tls(r: TableReader) -> TLSConfig | None:
    if not r.table:
        return None
    r.unknown({"ca", "cert", "key", "server_name"})
    files = {name: r.file(name, what="a PEM file") for name in ("ca", "cert", "key") if name in r.table}
    if ("cert" in files) != ("key" in files):
        raise r.fail("cert" if "key" in files else "key", "cert and key together (mutual TLS)")
    return TLSConfig(files.get("ca"), files.get("cert"), files.get("key"), r.get("server_name", str, ""))


def read_remote_settings(r: TableReader, model_name: str) -> RemoteSettings:
    target = r.get("target", str, expected="the upstream's gRPC address, host:port")
    if not target:
        raise r.fail("target", "the upstream's gRPC address, host:port", target)
    mode = r.choice("mode", MODES, "through")
    # ONNX Runtime keys only mean something for forward_clean's local copy: elsewhere reject them
    # rather than ignore them silently.
    r.unknown({"kind", *KEYS, *(OnnxRuntimeBackend.keys if mode == "forward_clean" else ())})
    d = RemoteSettings(target, model_name)
    return RemoteSettings(
        target=target,
        model=r.get("model", str, model_name),
        version=r.get("version", str, ""),
        mode=mode,
        timeout_s=r.positive_float("timeout_s", d.timeout_s, "a positive number of seconds"),
        max_batch=r.positive("max_batch", 0, allow_zero=True),
        connect_retries=r.positive("connect_retries", d.connect_retries, allow_zero=True),
        circuit_failures=r.positive("circuit_failures", d.circuit_failures),
        circuit_reset_s=r.positive_float("circuit_reset_s", d.circuit_reset_s, "a positive number of seconds"),
        health_interval_s=r.positive_float("health_interval_s", d.health_interval_s, "a positive number of seconds"),
        tls=_tls(r.sub("tls")),
        local=OnnxRuntimeBackend.read_keys(r) if mode == "forward_clean" else None,
    )
