"""KServe v2 protobuf <-> numpy. Checks only what the wire format itself requires (datatype
names, shapes against element counts, raw byte lengths); the model's contract is the data plane's.

A request is read in steps, so that whoever serves it can check the model's contract between
them and never pays for more than the request is allowed to cost: `read_head` (names, id,
parameters; nothing per tensor), `input_names` and `output_names` (lazy, so a count check can stop
early), `read_headers` (each input's name, datatype and shape, checked against the caps in
guard.protocol.limits before any array exists) and `decode_inputs` (the contents, each length
checked against its shape before anything is allocated). `decode_request` runs them all, for
callers that have no model to check against.

Shared memory (Triton's system shared-memory extension, docs/shared-memory.md): a tensor whose
parameters name a `shared_memory_region` has no contents in the message; its bytes are read through
a callable the caller passes (the server's region registry: this layer knows no registry), and
raw_input_contents hold entries for the other inputs only, in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from guard.protocol.contents import CONTENTS_FIELD, decode_bytes, decode_typed, raw_bytes
from guard.protocol.errors import InvalidInput
from guard.protocol.limits import MAX_ELEMENTS, MAX_NAME_CHARS, MAX_PARAMETERS, MAX_RANK, echo
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.tensors import DATATYPES, NUMPY_DTYPES, datatype_of
from guard.protocol.types import InferRequest, InferResponse, Parameter

SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"


@dataclass(frozen=True, slots=True)
class SharedMemoryRef:
    """Where a tensor's bytes lie: `byte_size` bytes at `offset` in a registered region."""

    region: str
    offset: int
    byte_size: int


ReadRegion = Callable[[SharedMemoryRef, str], bytes]
"""(where, tensor name) -> the bytes, copied out; raises InvalidInput for an unknown region or a
range outside it."""
WriteRegion = Callable[[SharedMemoryRef, str, bytes], None]


@dataclass(frozen=True, slots=True)
class TensorHeader:
    """What a request says about one input before its contents are read."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    typed: bool = False
    """Whether the contents come as typed contents rather than raw_input_contents."""
    shared_memory: SharedMemoryRef | None = None
    """Where the contents lie when they come from a shared-memory region (then typed is False)."""


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
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        inputs={},
        parameters={k: parameter_value(v) for k, v in message.parameters.items()},
        deadline=deadline,
    )


def shared_memory_of(
    tensor: pb.ModelInferRequest.InferInputTensor | pb.ModelInferRequest.InferRequestedOutputTensor,
) -> SharedMemoryRef | None:
    """The tensor's shared-memory parameters, checked as Triton checks them: a string region, an
    int64 byte size (required with a region), an optional int64 offset, neither without a region."""
    params = tensor.parameters
    if SHM_REGION not in params:
        for key in (SHM_OFFSET, SHM_BYTE_SIZE):
            if key in params:
                raise InvalidInput(f"tensor {echo(tensor.name)}: '{key}' given without '{SHM_REGION}'")
        return None
    region = params[SHM_REGION]
    if region.WhichOneof("parameter_choice") != "string_param":
        raise InvalidInput(f"tensor {echo(tensor.name)}: '{SHM_REGION}' must be a string_param")
    if SHM_BYTE_SIZE not in params:
        raise InvalidInput(f"tensor {echo(tensor.name)}: '{SHM_BYTE_SIZE}' must be given with '{SHM_REGION}'")
    sizes = []
    for key in (SHM_OFFSET, SHM_BYTE_SIZE):
        param = params.get(key)
        if param is None:
            sizes.append(0)
        elif param.WhichOneof("parameter_choice") != "int64_param" or param.int64_param < 0:
            raise InvalidInput(f"tensor {echo(tensor.name)}: '{key}' must be a non-negative int64_param")
        else:
            sizes.append(param.int64_param)
    return SharedMemoryRef(region.string_param, *sizes)


def output_placements(message: pb.ModelInferRequest) -> dict[str, SharedMemoryRef]:
    """The requested outputs to be written into shared memory, by name (callers check the output
    names and count first: this reads every requested output's parameters)."""
    placed = {}
    for output in message.outputs:
        if output.parameters and (where := shared_memory_of(output)) is not None:
            placed[output.name] = where
    return placed


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
    headers, seen, in_memory = [], set(), 0
    for tensor in message.inputs:
        name, datatype = tensor.name, tensor.datatype
        if name in seen:
            raise InvalidInput(f"input {echo(name)} appears more than once")
        seen.add(name)
        typed = bool(tensor.contents.ListFields())
        where = shared_memory_of(tensor) if tensor.parameters else None
        if where is not None:
            in_memory += 1
            if typed:
                raise InvalidInput(
                    f"input {echo(name)}: contents given for an input read from shared memory "
                    f"region {echo(where.region)}"
                )
        elif typed and len(raw):
            raise InvalidInput(
                f"input {echo(name)}: typed contents and raw_input_contents are mixed in one "
                "request; send all inputs one way"
            )
        if datatype not in NUMPY_DTYPES:
            raise InvalidInput(
                f"input {echo(name)}: unsupported datatype {echo(datatype)}, expected one of {', '.join(DATATYPES)}"
            )
        if len(tensor.shape) > MAX_RANK:  # before the shape is even copied
            raise InvalidInput(
                f"input {echo(name)}: shape has {len(tensor.shape)} dimensions, at most {MAX_RANK} are supported"
            )
        shape = tuple(tensor.shape)
        _check_shape(name, shape)
        headers.append(TensorHeader(name, datatype, shape, typed=where is None and not len(raw), shared_memory=where))
    if len(raw) and len(raw) != len(message.inputs) - in_memory:
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs) - in_memory} inputs "
            "not in shared memory: expected one entry per such input, in order"
        )
    return headers


def _from_region(header: TensorHeader, where: SharedMemoryRef, count: int, read_region: ReadRegion | None) -> bytes:
    if read_region is None:
        raise InvalidInput(
            f"input {echo(header.name)}: names shared memory region {echo(where.region)}, "
            "but shared memory is not accepted here"
        )
    if header.datatype != "BYTES":  # the size is known from the shape: checked before reading
        expected = count * NUMPY_DTYPES[header.datatype].itemsize
        if where.byte_size != expected:
            raise InvalidInput(
                f"input {echo(header.name)}: shared_memory_byte_size {where.byte_size} does not match "
                f"{header.datatype} shape {list(header.shape)} ({expected} bytes)"
            )
    return read_region(where, header.name)


def decode_inputs(
    message: pb.ModelInferRequest, headers: list[TensorHeader], read_region: ReadRegion | None = None
) -> dict[str, np.ndarray]:
    """The inputs' contents as arrays, in `headers` order (read_headers of the same message). Each
    content length is checked against its shape before anything is allocated. Inputs in shared
    memory are read with `read_region`; without one they are refused."""
    raw = iter(message.raw_input_contents)  # entries for the inputs not in shared memory, in order
    inputs = {}
    for tensor, header in zip(message.inputs, headers):
        count = math.prod(header.shape)
        if header.typed:
            flat = decode_typed(tensor, header.name, header.datatype, header.shape, count)
            inputs[header.name] = flat.reshape(header.shape)
            continue
        where = header.shared_memory
        data = next(raw) if where is None else _from_region(header, where, count, read_region)
        if header.datatype == "BYTES":
            flat = decode_bytes(header.name, data, count)
        else:
            itemsize = NUMPY_DTYPES[header.datatype].itemsize
            if len(data) != count * itemsize:
                raise InvalidInput(
                    f"input {echo(header.name)}: expected {count * itemsize} bytes of raw contents "
                    f"for {header.datatype} shape {list(header.shape)}, got {len(data)}"
                )
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


def encode_response(
    response: InferResponse,
    placed: Mapping[str, SharedMemoryRef] | None = None,
    write_region: WriteRegion | None = None,
) -> pb.ModelInferResponse:
    """Outputs go in raw_output_contents: tritonclient decodes only raw (or BYTES) contents. An
    output `placed` in shared memory is written there with `write_region` and its raw entry left
    empty, as Triton does (one entry per output, so the others keep their positions)."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for name, array in response.outputs:
        message.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        where = placed.get(name) if placed else None
        if where is None:
            message.raw_output_contents.append(raw_bytes(array))
            continue
        if write_region is None:
            raise ValueError(f"output {name!r} is placed in shared memory, but no write_region was given")
        write_region(where, name, raw_bytes(array))
        message.raw_output_contents.append(b"")
    for key, value in response.parameters.items():
        set_parameter(message.parameters[key], value)
    return message


# The client side, for a remote backend: the guard's batches go upstream as raw tensors.


def encode_request(
    model: str, version: str, inputs: dict[str, np.ndarray], outputs: list[str], request_id: str = ""
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input in raw_input_contents (one entry per input, in order)."""
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        message.inputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        message.raw_input_contents.append(raw_bytes(array))
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
            data = (
                decode_bytes(tensor.name, raw[i], count)
                if raw
                else np.array(list(tensor.contents.bytes_contents), dtype=np.object_)
            )
        elif raw:
            if len(raw[i]) != count * dtype.itemsize:
                raise ValueError(f"output '{tensor.name}': {len(raw[i])} bytes for {tensor.datatype} {list(shape)}")
            data = np.frombuffer(raw[i], dtype=dtype)
        else:
            data = np.asarray(
                getattr(tensor.contents, CONTENTS_FIELD.get(tensor.datatype, "fp32_contents")), dtype=dtype
            )
        if data.size != count:
            raise ValueError(f"output '{tensor.name}': {data.size} values for shape {list(shape)}")
        results[tensor.name] = data.reshape(shape)
    return results
