"""Layer 2, backends: what runs the protected model, behind guard.backends.base.Backend.

The registry maps a model config's `[backend] kind` to its class; each class reads its own
settings from that table. A new backend is one file plus one line in REGISTRY.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guard.backends.base import Backend
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.backends.remote.backend import RemoteBackend
from guard.backends.torch_runtime import TorchBackend
from guard.protocol.settings import TableReader
from guard.protocol.spec import ModelSpec

REGISTRY: dict[str, type[Backend]] = {cls.kind: cls for cls in (OnnxRuntimeBackend, RemoteBackend, TorchBackend)}


@dataclass(frozen=True)
class BackendSettings:
    """A model's [backend] table, read by the class its `kind` names."""

    kind: str
    settings: Any

    @property
    def backend_class(self) -> type[Backend]:
        return REGISTRY[self.kind]

    @property
    def model_files(self) -> tuple:
        return self.backend_class.model_files(self.settings)


def read_backend_settings(reader: TableReader, model_name: str) -> BackendSettings:
    kind = reader.choice("kind", tuple(REGISTRY), "onnxruntime")
    return BackendSettings(kind, REGISTRY[kind].read_settings(reader, model_name))


def build_backend(spec: ModelSpec, backend: BackendSettings, feature_readers: tuple[str, ...] = ()) -> Backend:
    """The backend the guard pipeline calls, loaded (its forward_to, if any, loaded too)."""
    built = backend.backend_class.create(spec, backend.settings, feature_readers)
    built.load()
    if built.forward_to is not None:
        try:
            built.forward_to.load()
        except BaseException:
            built.close()
            raise
    return built
