"""KServe v2 protobuf <-> numpy. Checks only what the wire format itself requires (datatype
names, shapes against element counts, raw byte lengths); the model's contract is the data plane's.

A request is read in steps, so that whoever serves it can check the model's contract between
them and never pays for more than the request is allowed to cost: `read_head` (names, id,
parameters; nothing per tensor), `input_names` and `output_names` (lazy, so a count check can stop
early), `read_headers` (each input's name, datatype and shape, checked against the caps in
guard.protocol.limits before any array exists) and `decode_inputs` (the contents, each length
checked against its shape before anything is allocated). `decode_request` runs them all, for
callers that have no model to check against.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from guard.protocol.errors import InvalidInput
from guard.protocol.limits import MAX_ELEMENTS, MAX_NAME_CHARS, MAX_PARAMETERS, MAX_RANK, echo
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
# Fixed-width typed fields: serialized (packed) they are the little-endian array itself.
_PACKED_FIXED = {"fp32_contents": 6, "fp64_contents": 7}


@dataclass(frozen=True, slots=True)
class TensorHeader:
    """What a request says about one input before its contents are read."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    typed: bool = False
    """Whether the contents come as typed contents rather than raw_input_contents."""


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


def check_name(field: str, value: str) -> None:
    """A model name or version: short and printable, as a directory name is. Rejected here, a 4 MB
    name or one holding a newline never reaches a message or a log line."""
    if len(value) > MAX_NAME_CHARS:
        raise InvalidInput(f"{field} {echo(value)} is longer than {MAX_NAME_CHARS} characters")
    if not value.isprintable():
        raise InvalidInput(f"{field} {echo(value)} holds control characters")


def read_head(message: pb.ModelInferRequest, deadline: float | None) -> InferRequest:
    """The request without its tensors (inputs empty, outputs empty until the model's contract
    has been checked): names, id, parameters. Nothing here costs more per tensor."""
    check_name("model_name", message.model_name)
    check_name("model_version", message.model_version)
    if len(message.parameters) > MAX_PARAMETERS:
        raise InvalidInput(f"request has {len(message.parameters)} parameters, at most {MAX_PARAMETERS} are accepted")
    return InferRequest(model_name=message.model_name, model_version=message.model_version, id=message.id,
                        inputs={}, parameters={k: parameter_value(v) for k, v in message.parameters.items()},
                        deadline=deadline)


def input_names(message: pb.ModelInferRequest) -> Iterator[str]:
    """Lazily: a check that stops after a few names never touches the rest."""
    return (tensor.name for tensor in message.inputs)


def output_names(message: pb.ModelInferRequest) -> Iterator[str]:
    return (output.name for output in message.outputs)


def _check_shape(name: str, shape: tuple[int, ...]) -> None:
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {echo(name)}: shape {list(shape)} has a negative dimension")
    # A zero dimension counts as one: [0, 2^62, 2^62] carries no data, yet numpy cannot describe it.
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise InvalidInput(f"input {echo(name)}: shape {list(shape)} describes more than {MAX_ELEMENTS} elements")


def read_headers(message: pb.ModelInferRequest) -> list[TensorHeader]:
    """Each input's name, datatype and shape, checked against the wire format and the caps in
    guard.protocol.limits; no contents are touched. Callers that know the model check the input
    count first (validation.check_input_names): this is one step per input."""
    raw = message.raw_input_contents
    if len(raw) and len(raw) != len(message.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
                           "expected one entry per input, in order")
    headers, seen = [], set()
    for tensor in message.inputs:
        name, datatype = tensor.name, tensor.datatype
        if name in seen:
            raise InvalidInput(f"input {echo(name)} appears more than once")
        seen.add(name)
        typed = bool(tensor.contents.ListFields())
        if typed and len(raw):
            raise InvalidInput(f"input {echo(name)}: typed contents and raw_input_contents are mixed in one "
                               "request; send all inputs one way")
        if datatype not in NUMPY_DTYPES:
            raise InvalidInput(f"input {echo(name)}: unsupported datatype {echo(datatype)}, expected one of "
                               f"{', '.join(DATATYPES)}")
        if len(tensor.shape) > MAX_RANK:  # before the shape is even copied
            raise InvalidInput(f"input {echo(name)}: shape has {len(tensor.shape)} dimensions, "
                               f"at most {MAX_RANK} are supported")
        shape = tuple(tensor.shape)
        _check_shape(name, shape)
        headers.append(TensorHeader(name, datatype, shape, typed=not len(raw)))
    return headers


def _decode_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    # Every element needs a 4-byte length: a count the contents cannot hold fails before the loop.
    if count * 4 > len(raw):
        raise InvalidInput(f"input {echo(name)}: {len(raw)} bytes of BYTES contents cannot hold {count} elements "
                           "(each takes a 4-byte length)")
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {echo(name)}: BYTES contents end before element {len(items)} of {count}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input {echo(name)}: BYTES element {len(items)} claims {length} bytes, "
                               f"{len(raw) - offset} remain")
        items.append(raw[offset:offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidInput(f"input {echo(name)}: {len(raw) - offset} bytes left after {count} BYTES elements")
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    for end in range(offset, min(offset + 10, len(data))):
        value |= (data[end] & 0x7F) << shift
        shift += 7
        if data[end] < 0x80:
            return value, end + 1
    return -1, offset


def _packed(contents: pb.InferTensorContents, field: str, dtype: np.dtype, count: int) -> np.ndarray | None:
    """fp32/fp64 contents as an array at memory speed: serialized, a packed fixed-width field is
    one tag, one length and the little-endian values (converting element by element costs
    ~100 ns each). None when the bytes hold anything else (unknown fields): the slow path."""
    payload = contents.SerializeToString()
    size = count * dtype.itemsize
    length, start = _varint(payload, 1)
    if not payload or payload[0] != (_PACKED_FIXED[field] << 3 | 2) or length != size or start + size != len(payload):
        return None
    return np.frombuffer(payload, dtype=dtype.newbyteorder("<"), offset=start).astype(dtype, copy=False)


def _decode_typed(tensor: pb.ModelInferRequest.InferInputTensor, header: TensorHeader, count: int) -> np.ndarray:
    name, datatype = header.name, header.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input {echo(name)}: datatype {datatype} must be sent in raw_input_contents")
    used = [f.name for f, _ in tensor.contents.ListFields()]
    if any(f != field for f in used):
        raise InvalidInput(f"input {echo(name)}: datatype {datatype} expects its values in contents.{field}, "
                           f"got contents.{', contents.'.join(used)}")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input {echo(name)}: shape {list(header.shape)} needs {count} values, "
                           f"contents.{field} has {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array
    dtype = NUMPY_DTYPES[datatype]
    if field in _PACKED_FIXED and count and (array := _packed(tensor.contents, field, dtype, count)) is not None:
        return array
    try:
        return np.fromiter(values, dtype=dtype, count=count)
    except OverflowError:
        raise InvalidInput(f"input {echo(name)}: contents.{field} holds values outside {datatype}") from None


def decode_inputs(message: pb.ModelInferRequest, headers: list[TensorHeader]) -> dict[str, np.ndarray]:
    """The inputs' contents as arrays, in `headers` order (read_headers of the same message). Each
    content length is checked against its shape before anything is allocated."""
    raw = message.raw_input_contents
    inputs = {}
    for i, (tensor, header) in enumerate(zip(message.inputs, headers)):
        count = math.prod(header.shape)
        if header.typed:
            flat = _decode_typed(tensor, header, count)
        elif header.datatype == "BYTES":
            flat = _decode_bytes(header.name, raw[i], count)
        else:
            data, itemsize = raw[i], NUMPY_DTYPES[header.datatype].itemsize
            if len(data) != count * itemsize:
                raise InvalidInput(f"input {echo(header.name)}: expected {count * itemsize} bytes of raw contents "
                                   f"for {header.datatype} shape {list(header.shape)}, got {len(data)}")
            flat = np.frombuffer(data, dtype=NUMPY_DTYPES[header.datatype])
        inputs[header.name] = flat.reshape(header.shape)
    return inputs


def decode_request(message: pb.ModelInferRequest, deadline: float | None) -> tuple[InferRequest, dict[str, str]]:
    """The domain request and each input's declared datatype, checked against the wire format only
    (no model): every step above, in order."""
    request = read_head(message, deadline)
    headers = read_headers(message)
    request.inputs = decode_inputs(message, headers)
    request.outputs = tuple(output_names(message))
    return request, {h.name: h.datatype for h in headers}


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
