"""A parsed ModelInferRequest whose tensors are not decoded yet (validation.EncodedInputs).

The data plane calls `decode(config)` once it knows the model and that the model has room, and the
checks run cheapest first, each before the work it guards: the requested outputs and the input
names (reading at most one more than the model declares), the inputs' headers against the wire caps
(codec.read_headers) and the model's contract (validation.check_headers), and only then the
contents. So a request naming an output a million times, or 64 MB of BYTES for an FP32 input, is
refused for the price of a few comparisons. Large BYTES contents (the per-element loop is Python)
are decoded on a worker thread: the event loop gets the GIL back every switch interval (5 ms)
instead of waiting for the whole loop.
"""

from __future__ import annotations

import asyncio

import numpy as np

from guard.protocol import codec
from guard.protocol.limits import OFFLOAD_BYTES
from guard.protocol.proto import inference_pb2 as pb
from guard.serving import validation
from guard.serving.model_config import ModelConfig


class EncodedRequest:
    def __init__(self, message: pb.ModelInferRequest, size: int):
        self.message = message
        self.size = size
        """The request's size on the wire, in bytes."""

    async def decode(self, config: ModelConfig) -> tuple[dict[str, np.ndarray], tuple[str, ...], dict[str, str]]:
        message = self.message
        outputs = validation.check_outputs(config, codec.output_names(message))
        validation.check_input_names(config, codec.input_names(message))
        headers = codec.read_headers(message)
        validation.check_headers(config, headers)
        if self.size > OFFLOAD_BYTES and any(h.datatype == "BYTES" for h in headers):
            inputs = await asyncio.to_thread(codec.decode_inputs, message, headers)
        else:
            inputs = codec.decode_inputs(message, headers)
        return inputs, outputs, {header.name: header.datatype for header in headers}
