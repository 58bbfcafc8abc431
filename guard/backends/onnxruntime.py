"""In-process ONNX Runtime backend: the model file in the model directory, on the execution
providers that load on this host (TensorRT -> CUDA -> CPU, guard.backends.providers)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from guard.backends.base import Backend
from guard.backends.onnx_graph import onnx_signature
from guard.backends.providers import PROVIDERS, TensorRTConfig, select_providers
from guard.protocol.errors import BackendError, ConfigError
from guard.protocol.settings import TableReader
from guard.protocol.spec import ModelSpec, TensorSpec

log = logging.getLogger("guard.backends")


@dataclass(frozen=True)
class OnnxRuntimeSettings:
    model_file: Path
    providers: tuple[str, ...] = PROVIDERS
    """Execution providers in order of preference; only those that load are used."""
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)


class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"
    keys = ("model_file", "providers", "intra_op_threads", "inter_op_threads", "tensorrt")

    @classmethod
    def read_settings(cls, reader: TableReader, model_name: str) -> OnnxRuntimeSettings:
        reader.unknown({"kind", *cls.keys})
        return cls.read_keys(reader)

    @staticmethod
    def read_keys(reader: TableReader) -> OnnxRuntimeSettings:
        """Its keys of a [backend] table that may hold others (a remote backend's local copy)."""
        providers = reader.get("providers", list, list(PROVIDERS))
        for provider in providers:
            if provider not in PROVIDERS:
                raise reader.fail("providers", "a list drawn from " + ", ".join(PROVIDERS), providers)
        trt = reader.sub("tensorrt")
        trt.unknown({"fp16", "int8", "engine_cache_dir"})
        return OnnxRuntimeSettings(
            model_file=reader.file("model_file", "model.onnx", "the model's ONNX file"),
            providers=tuple(providers),
            intra_op_threads=reader.positive("intra_op_threads", 1, allow_zero=True),
            inter_op_threads=reader.positive("inter_op_threads", 1, allow_zero=True),
            tensorrt=TensorRTConfig(trt.get("fp16", bool, False), trt.get("int8", bool, False), _engine_cache(trt)),
        )

    @staticmethod
    def model_files(settings: OnnxRuntimeSettings) -> tuple[Path, ...]:
        return (settings.model_file,)

    @classmethod
    def open(cls, model_file: Path, **settings) -> OnnxRuntimeBackend:
        """A loaded session outside any repository (calibration, scans, tests); keyword arguments
        are OnnxRuntimeSettings fields."""
        model_file = Path(model_file)
        backend = cls(
            ModelSpec(model_file.stem, "1", model_file.parent, (), ()), OnnxRuntimeSettings(model_file, **settings)
        )
        backend.load()
        return backend

    def load(self) -> None:
        s = self.settings
        options = ort.SessionOptions()
        options.intra_op_num_threads = s.intra_op_threads
        options.inter_op_num_threads = s.inter_op_threads
        options.log_severity_level = 3
        providers = select_providers(s.providers, s.tensorrt)
        try:
            self.session = ort.InferenceSession(
                str(s.model_file),
                options,
                providers=[name for name, _ in providers],
                provider_options=[opts for _, opts in providers],
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for unreadable or invalid models
            raise ConfigError(
                self.spec.config_path,
                "backend.model_file",
                "an ONNX model ONNX Runtime can load",
                f"{s.model_file.name}: {str(exc).splitlines()[0][:200]}",
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.string_inputs = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}
        """Inputs ONNX declares as strings: clients' BYTES rows arrive as Python bytes, which ONNX
        Runtime accepts and then misreads (zero logits after the first call), so they go as str."""
        self.output_names = [o.name for o in self.session.get_outputs()]
        log.info("onnxruntime session on %s", ", ".join(self.session.get_providers()))

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return onnx_signature(self.settings.model_file)

    @property
    def description(self) -> str:
        return "onnxruntime:" + ",".join(self.session.get_providers())

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        for name in self.string_inputs & inputs.keys():
            inputs = {**inputs, name: as_strings(inputs[name])}
        try:
            results = self.session.run(outputs, inputs)
        except Exception as exc:  # ORT raises its own exception types; all mean the batch failed
            raise BackendError(f"model execution failed: {exc}") from exc
        return dict(zip(outputs, results))


def as_strings(array: np.ndarray) -> np.ndarray:
    """An object array of UTF-8 bytes as str, shape kept (a byte that is not UTF-8 becomes U+FFFD:
    the request was accepted as BYTES, and the model reads what a lenient decoder makes of it)."""
    out = np.empty(array.shape, dtype=object)
    out.reshape(-1)[:] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.reshape(-1)]
    return out


def _engine_cache(trt: TableReader) -> str:
    """[backend.tensorrt] engine_cache_dir: TensorRT deserializes the engines it finds there, so it
    lies inside the model directory like every file the config names; "" = no cache."""
    value = trt.get("engine_cache_dir", str, "")
    return str(trt.inside("engine_cache_dir", value)) if value else ""
