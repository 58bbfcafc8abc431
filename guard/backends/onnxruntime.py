"""In-process ONNX Runtime backend."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from guard.backends.base import Backend
from guard.backends.providers import select_providers
from guard.config import BackendConfig
from guard.errors import BackendError

log = logging.getLogger("guard.backends")


class OnnxRuntimeBackend(Backend):
    def __init__(self, model: Path | bytes, config: BackendConfig = BackendConfig()):
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = config.inter_op_threads
        options.log_severity_level = 3
        providers = select_providers(config.providers, config.tensorrt)
        source = str(model) if isinstance(model, Path) else model
        self.session = ort.InferenceSession(
            source, options, providers=[name for name, _ in providers],
            provider_options=[opts for _, opts in providers],
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        log.info("onnxruntime session on %s", ", ".join(self.session.get_providers()))

    @property
    def description(self) -> str:
        return "onnxruntime:" + ",".join(self.session.get_providers())

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str],
              deadline: float | None = None) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(outputs, inputs)
        except Exception as exc:  # ORT raises its own exception types; all mean the batch failed
            raise BackendError(f"model execution failed: {exc}") from exc
        return dict(zip(outputs, results))
