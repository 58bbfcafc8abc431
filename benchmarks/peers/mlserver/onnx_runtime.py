"""A minimal MLServer runtime that serves one ONNX file with ONNX Runtime on the CPU.

This file runs inside MLServer's own virtual environment (loaded by MLServer from the model
folder), never inside the guard's: it imports only MLServer and onnxruntime.
"""

from __future__ import annotations

import os

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        # The same threading as the guard's backend, so the two compare like with like.
        options.intra_op_num_threads = int(os.environ.get("PEER_INTRA_OP_THREADS", "1"))
        options.log_severity_level = 3
        self._session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {request_input.name: NumpyCodec.decode_input(request_input) for request_input in payload.inputs}
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._outputs
        results = self._session.run(wanted, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(wanted, results)],
        )
