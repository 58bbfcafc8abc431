"""A parsed ModelInferRequest whose tensors are not decoded yet (validation.EncodedInputs).

The data plane calls `decode(config)` once it knows the model and that the model has room, and the
checks run cheapest first, each before the work it guards: the requested outputs and the input
names (reading at most one more than the model declares), the inputs' headers against the wire caps
(codec.read_headers) and the model's contract (validation.check_headers), and only then the
contents. So a request naming an output a million times, or 64 MB of BYTES for an FP32 input, is
refused for the price of a few comparisons. Large BYTES contents (the per-element loop is Python)
are decoded on a worker thread: the event loop gets the GIL back every switch interval (5 ms)
instead of waiting for the whole loop.

Tensors in shared memory (docs/shared-memory.md) go through `regions`: inputs are copied out of
their region while decoding, and requested outputs placed in a region are checked against it before
the model runs and written there by `encode`.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np

from guard.protocol import codec
from guard.protocol.errors import InvalidInput
from guard.protocol.limits import OFFLOAD_BYTES, echo
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.tensors import NUMPY_DTYPES
from guard.protocol.types import InferResponse
from guard.serving import validation
from guard.serving.model_config import ModelConfig
from guard.serving.shared_memory import SharedMemoryRegistry


class EncodedRequest:
    def __init__(self, message: pb.ModelInferRequest, size: int, regions: SharedMemoryRegistry | None = None):
        self.message = message
        self.size = size
        """The request's size on the wire, in bytes."""
        self.regions = regions
        """The server's shared-memory regions; None refuses tensors in shared memory."""
        self.placed: dict[str, codec.SharedMemoryRef] = {}
        """Requested outputs to write into shared memory, by name (known once decoded)."""

    async def decode(self, config: ModelConfig) -> tuple[dict[str, np.ndarray], tuple[str, ...], dict[str, str]]:
        message = self.message
        outputs = validation.check_outputs(config, codec.output_names(message))
        validation.check_input_names(config, codec.input_names(message))
        headers = codec.read_headers(message)
        rows = validation.check_headers(config, headers)
        self._place_outputs(config, rows)
        read = self.regions.read if self.regions is not None else None
        size = self.size + sum(h.shared_memory.byte_size for h in headers if h.shared_memory is not None)
        if size > OFFLOAD_BYTES and any(h.datatype == "BYTES" for h in headers):
            inputs = await asyncio.to_thread(codec.decode_inputs, message, headers, read)
        else:
            inputs = codec.decode_inputs(message, headers, read)
        return inputs, outputs, {header.name: header.datatype for header in headers}

    def _place_outputs(self, config: ModelConfig, rows: int) -> None:
        """Outputs to shared memory: each region registered, writable, holding its range and, where
        the model declares the output's full shape, large enough; all before the model runs."""
        self.placed = codec.output_placements(self.message)
        specs = {spec.name: spec for spec in config.outputs}
        for name, where in self.placed.items():
            if self.regions is None:
                raise InvalidInput(f"output {echo(name)}: shared memory is not accepted here")
            self.regions.check_output(where, name)
            spec = specs[name]
            if spec.datatype in NUMPY_DTYPES and spec.datatype != "BYTES" and all(d >= 0 for d in spec.shape):
                needed = rows * math.prod(spec.shape) * NUMPY_DTYPES[spec.datatype].itemsize
                if where.byte_size < needed:
                    raise InvalidInput(
                        f"output {echo(name)}: shared_memory_byte_size {where.byte_size} cannot hold "
                        f"{spec.datatype} {[rows, *spec.shape]} ({needed} bytes)"
                    )

    def encode(self, response: InferResponse) -> pb.ModelInferResponse:
        write = self.regions.write if self.regions is not None else None
        return codec.encode_response(response, self.placed, write)
