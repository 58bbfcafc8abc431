"""Layer 2, backends: what runs the protected model, behind guard.backends.base.Backend.

The registry maps a model config's `[backend] kind` to its class; each class reads its own
settings from that table. A new backend is one file plus one line in REGISTRY; an installed package
adds one through the entry-point group `guard.backends` (guard.protocol.plugins).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guard.backends.base import Backend
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.backends.remote.backend import RemoteBackend
from guard.backends.torch_runtime import TorchBackend
from guard.protocol.plugins import PluginRegistry, subclass_of
from guard.protocol.settings import TableReader
from guard.protocol.spec import ModelSpec

REGISTRY: dict[str, type[Backend]] = {cls.kind: cls for cls in (OnnxRuntimeBackend, RemoteBackend, TorchBackend)}
"""The built-in backend kinds."""
AVAILABLE = PluginRegistry("guard.backends", REGISTRY, subclass_of(Backend), "backend kind")
"""The built-ins plus the installed plugins: what `[backend] kind` may name."""


@dataclass(frozen=True)
class BackendSettings:
    """A model's [backend] table, read by the class its `kind` names."""

    kind: str
    settings: Any

    @property
    def backend_class(self) -> type[Backend]:
        return AVAILABLE.get(self.kind)

    @property
    def model_files(self) -> tuple:
        return self.backend_class.model_files(self.settings)


def read_backend_settings(reader: TableReader, model_name: str) -> BackendSettings:
    kind = reader.get("kind", str, "onnxruntime")
    return BackendSettings(kind, AVAILABLE.resolve(reader, "kind", kind).read_settings(reader, model_name))


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
