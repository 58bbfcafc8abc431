"""KServe v2 protobuf <-> numpy. Checks only what the wire format itself requires (datatype
names, shapes against element counts, raw byte lengths); the model's contract is the data plane's.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from guard.protocol.errors import InvalidInput
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.tensors import DATATYPES, NUMPY_DTYPES, datatype_of
from guard.protocol.types import InferRequest, InferResponse, Parameter

# Which typed-contents field carries each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def parameter_value(param: pb.InferParameter) -> Parameter:
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else ""


def set_parameter(target: pb.InferParameter, value: Parameter) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _decode_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input '{name}': BYTES contents end before element {len(items)} of {count}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element {len(items)} claims {length} bytes, "
                               f"{len(raw) - offset} remain")
        items.append(raw[offset:offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidInput(f"input '{name}': {len(raw) - offset} bytes left after {count} BYTES elements")
    return np.array(items, dtype=np.object_)


def _decode_input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    if datatype not in NUMPY_DTYPES:
        raise InvalidInput(f"input '{name}': unsupported datatype '{datatype}', expected one of "
                           f"{', '.join(DATATYPES)}")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
    count = math.prod(shape)  # exact for any size, and far cheaper than np.prod on a tuple
    dtype = NUMPY_DTYPES[datatype]
    if raw is not None:
        if datatype == "BYTES":
            return _decode_bytes(name, raw, count).reshape(shape)
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(f"input '{name}': expected {count * dtype.itemsize} bytes of raw contents "
                               f"for {datatype} shape {list(shape)}, got {len(raw)}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': datatype {datatype} must be sent in raw_input_contents")
    used = [f.name for f, _ in tensor.contents.ListFields()]
    if any(f != field for f in used):
        raise InvalidInput(f"input '{name}': datatype {datatype} expects its values in contents.{field}, "
                           f"got contents.{', contents.'.join(used)}")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': shape {list(shape)} needs {count} values, "
                           f"contents.{field} has {len(values)}")
    if datatype == "BYTES":
        return np.array(list(values), dtype=np.object_).reshape(shape)
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"input '{name}': contents.{field} holds values outside {datatype}") from None


def decode_request(message: pb.ModelInferRequest, deadline: float | None) -> tuple[InferRequest, dict[str, str]]:
    """The domain request and each input's declared datatype."""
    raw = list(message.raw_input_contents)
    if raw:
        if len(raw) != len(message.inputs):
            raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
                               "expected one entry per input, in order")
        typed = [t.name for t in message.inputs if t.contents.ListFields()]
        if typed:
            raise InvalidInput(f"input '{typed[0]}': typed contents and raw_input_contents are mixed in one "
                               "request; send all inputs one way")
    inputs, datatypes = {}, {}
    for i, tensor in enumerate(message.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' appears more than once")
        inputs[tensor.name] = _decode_input(tensor, raw[i] if raw else None)
        datatypes[tensor.name] = tensor.datatype
    request = InferRequest(
        model_name=message.model_name, model_version=message.model_version, id=message.id,
        inputs=inputs, outputs=tuple(o.name for o in message.outputs),
        parameters={k: parameter_value(v) for k, v in message.parameters.items()}, deadline=deadline,
    )
    return request, datatypes


def _raw(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    """Outputs go in raw_output_contents: tritonclient decodes only raw (or BYTES) contents."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                    id=response.id)
    for name, array in response.outputs:
        message.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        message.raw_output_contents.append(_raw(array))
    for key, value in response.parameters.items():
        set_parameter(message.parameters[key], value)
    return message


# The client side, for a remote backend: the guard's batches go upstream as raw tensors.

def encode_request(model: str, version: str, inputs: dict[str, np.ndarray], outputs: list[str],
                   request_id: str = "") -> pb.ModelInferRequest:
    """A ModelInferRequest with every input in raw_input_contents (one entry per input, in order)."""
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        message.inputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        message.raw_input_contents.append(_raw(array))
    for name in outputs:
        message.outputs.add(name=name)
    return message


def decode_response(message: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Outputs by name from raw_output_contents or, from servers that send them, typed contents.
    Raises ValueError when the message contradicts itself (the caller names the upstream)."""
    raw = list(message.raw_output_contents)
    if raw and len(raw) != len(message.outputs):
        raise ValueError(f"{len(raw)} raw_output_contents for {len(message.outputs)} outputs")
    results = {}
    for i, tensor in enumerate(message.outputs):
        dtype = NUMPY_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise ValueError(f"output '{tensor.name}': unknown datatype '{tensor.datatype}'")
        shape = tuple(tensor.shape)
        count = int(np.prod(shape, dtype=np.int64))
        if tensor.datatype == "BYTES":
            data = (_decode_bytes(tensor.name, raw[i], count) if raw
                    else np.array(list(tensor.contents.bytes_contents), dtype=np.object_))
        elif raw:
            if len(raw[i]) != count * dtype.itemsize:
                raise ValueError(f"output '{tensor.name}': {len(raw[i])} bytes for {tensor.datatype} {list(shape)}")
            data = np.frombuffer(raw[i], dtype=dtype)
        else:
            data = np.asarray(getattr(tensor.contents, CONTENTS_FIELD.get(tensor.datatype, "fp32_contents")),
                              dtype=dtype)
        if data.size != count:
            raise ValueError(f"output '{tensor.name}': {data.size} values for shape {list(shape)}")
        results[tensor.name] = data.reshape(shape)
    return results
