"""Backends behind one interface (base.Backend): ONNX Runtime in process, or a KServe v2 upstream."""

from __future__ import annotations

from guard.backends.base import Backend
from guard.config import ModelConfig


def build_backends(config: ModelConfig, feature_detectors: tuple[str, ...] = ()) -> tuple[Backend, Backend | None]:
    """(the backend the guard pipeline calls, the upstream that clean requests are forwarded to).

    onnxruntime:           (ONNX Runtime, None)
    remote, through:       (the upstream, None): variants and originals go upstream together
    remote, forward_clean: (ONNX Runtime on the local copy, the upstream)
    """
    from guard.backends.onnxruntime import OnnxRuntimeBackend
    from guard.backends.remote import RemoteBackend

    remote = config.backend.remote
    if remote is None:
        return OnnxRuntimeBackend(config.model_file, config.backend), None
    if remote.mode == "through":
        return RemoteBackend(config, remote, feature_detectors), None
    return OnnxRuntimeBackend(config.model_file, config.backend), RemoteBackend(config, remote)
