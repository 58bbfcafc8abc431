"""The fuzzer's cases (hypothesis strategies, shared by benchmarks/fuzz.py and
tests/serving/test_fuzz.py): structured ModelInferRequests close to a valid request of the demo
model, the other RPCs' messages, and byte-level mutations of valid serialized requests."""

from __future__ import annotations

import math
import struct

import numpy as np
from hypothesis import strategies as st

from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.tensors import DATATYPES

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
UNARY = [m.name for m in SERVICE.methods if not (m.client_streaming or m.server_streaming)]
STREAM = "ModelStreamInfer"

GOOD_ROWS = np.linspace(0.0, 1.0, 256, dtype=np.float32).reshape(1, 1, 16, 16)


def good_request(request_id: str = "seed") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="digits", id=request_id)
    message.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
    message.raw_input_contents.append(GOOD_ROWS.tobytes())
    return message


# -- structured requests ---------------------------------------------------------------------------

_NAMES = st.one_of(
    st.sampled_from(["input", "logits", "digits", "digits_fp32", "", "extra", "input "]),
    st.text(max_size=30),
    st.builds(
        lambda c, n: c * n,
        st.sampled_from(["a", "\n", "'", "\\", "\x00", "é"]),
        st.sampled_from([1, 300, 100_000, 1_000_000]),
    ),
)
_DIMS = st.one_of(st.integers(-2, 40), st.sampled_from([0, 1, 16, 2**31, 2**62, 2**63 - 1, -(2**63)]))
_SHAPES = st.one_of(
    st.builds(lambda n: [n, 1, 16, 16], st.integers(-1, 40)),
    st.lists(_DIMS, max_size=6),
    st.lists(st.sampled_from([0, 1, 2**62]), min_size=15, max_size=70),
)


@st.composite
def _parameter(draw) -> tuple[str, pb.InferParameter]:
    key = draw(st.one_of(st.sampled_from(["timeout", "guard_explain", "priority", "sequence_id"]), _NAMES))
    kind = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"]))
    value = {
        "bool_param": st.booleans(),
        "int64_param": st.integers(-(2**63), 2**63 - 1),
        "string_param": _NAMES,
        "double_param": st.floats(allow_nan=True),
        "uint64_param": st.integers(0, 2**64 - 1),
    }[kind]
    param = pb.InferParameter()
    setattr(param, kind, draw(value))
    return key, param


_TYPED = {
    "bool_contents": st.lists(st.booleans(), max_size=300),
    "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=300),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=300),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=300),
    "fp32_contents": st.lists(st.floats(width=32), max_size=300),
    "fp64_contents": st.lists(st.floats(), max_size=300),
    "bytes_contents": st.lists(st.binary(max_size=20), max_size=40),
}


def _raw_for(shape: list[int], datatype: str, kind: str, seed: int) -> bytes:
    """Contents of exactly the size the shape needs (when it is sane), or not."""
    count = math.prod(shape) if shape and all(0 <= d <= 4096 for d in shape) else 0
    if count > 64 * 256:
        count = 0
    if kind == "exact":
        if datatype == "BYTES":
            return b"".join(struct.pack("<I", 3) + b"abc" for _ in range(count))
        itemsize = {
            "BOOL": 1,
            "UINT8": 1,
            "INT8": 1,
            "UINT16": 2,
            "INT16": 2,
            "FP16": 2,
            "UINT32": 4,
            "INT32": 4,
            "FP32": 4,
            "UINT64": 8,
            "INT64": 8,
            "FP64": 8,
        }.get(datatype, 4)
        rng = np.random.default_rng(seed)
        if datatype == "FP32":
            return rng.random(count, dtype=np.float32).tobytes()
        return rng.integers(0, 256, count * itemsize, dtype=np.uint8).tobytes()
    if kind == "nan":
        values = np.full(count, 0.5, np.float32)
        if count:
            values[seed % count] = np.nan
        return values.tobytes()
    if kind == "huge":
        return b"\x00" * (4 * 1024 * 1024)
    if kind == "bytes-lengths":  # BYTES elements claiming more than there is
        return struct.pack("<I", 2**32 - 1) * max(count, 1)
    return np.random.default_rng(seed).integers(0, 256, seed % 2000, dtype=np.uint8).tobytes()


FAULTS = (
    "model_name",
    "model_version",
    "id",
    "datatype",
    "shape",
    "contents",
    "typed",
    "mixed",
    "extra_input",
    "duplicate_input",
    "no_input",
    "raw_count",
    "outputs",
    "parameters",
    "many_parameters",
    "bytes",
)
"""What a structured case may change in a valid request (each case: up to three of them)."""


@st.composite
def infer_requests(draw) -> pb.ModelInferRequest:
    """A valid request of the demo model with up to three faults applied, so that every check on
    the path, not just the first, meets bad input (and a share of cases is served)."""
    faults = set(draw(st.lists(st.sampled_from(FAULTS), max_size=3, unique=True)))
    rows = draw(st.integers(1, 4))
    message = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["digits", "digits", "digits_fp32"])), id=draw(st.text(max_size=12))
    )
    if "model_name" in faults:
        message.model_name = draw(_NAMES)
    if "model_version" in faults:
        message.model_version = draw(st.one_of(st.sampled_from(["1", "7"]), _NAMES))
    if "id" in faults:
        message.id = draw(_NAMES)
    datatype = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6))) if "datatype" in faults else "FP32"
    shape = draw(_SHAPES) if "shape" in faults else [rows, 1, 16, 16]
    if "bytes" in faults:
        datatype = "BYTES"
    tensor = message.inputs.add(name="input", datatype=datatype, shape=shape)
    seed = draw(st.integers(0, 2**16))
    if "typed" in faults:
        fields = draw(st.lists(st.sampled_from(sorted(_TYPED)), min_size=1, max_size=2, unique=True))
        for name in fields:
            getattr(tensor.contents, name).extend(draw(_TYPED[name]))
        if draw(st.booleans()):  # the right count of in-range values, in the right field
            tensor.contents.Clear()
            tensor.contents.fp32_contents.extend(GOOD_ROWS.reshape(-1).tolist() * rows)
    else:
        kind = (
            draw(st.sampled_from(["exact", "nan", "random", "huge", "bytes-lengths"]))
            if "contents" in faults
            else "exact"
        )
        message.raw_input_contents.append(_raw_for(shape, datatype, kind, seed))
    if "mixed" in faults:
        tensor.contents.fp32_contents.append(0.5)
    if "extra_input" in faults:
        message.inputs.add(name=draw(_NAMES), datatype="FP32", shape=[rows, 1])
        if len(message.raw_input_contents):
            message.raw_input_contents.append(np.zeros(rows, np.float32).tobytes())
    if "duplicate_input" in faults:
        message.inputs.append(message.inputs[0])
        if len(message.raw_input_contents):
            message.raw_input_contents.append(message.raw_input_contents[0])
    if "no_input" in faults:
        message.ClearField("inputs")
    if "raw_count" in faults:
        message.raw_input_contents.append(b"\x00" * draw(st.sampled_from([0, 4, 1024])))
    outputs = (
        draw(st.lists(st.one_of(st.just("logits"), _NAMES), max_size=3))
        if "outputs" in faults
        else draw(st.sampled_from([[], ["logits"]]))
    )
    repeat = draw(st.sampled_from([1, 2, 1000, 100_000])) if "outputs" in faults else 1
    for name in outputs:
        for _ in range(repeat if name == "logits" else 1):
            message.outputs.add(name=name)
    if "parameters" in faults:
        for key, param in draw(st.lists(_parameter(), min_size=1, max_size=4)):
            message.parameters[key].CopyFrom(param)
    elif draw(st.booleans()):
        message.parameters["guard_explain"].bool_param = True
    if "many_parameters" in faults:
        for i in range(draw(st.sampled_from([250, 300]))):
            message.parameters[f"p{i}"].bool_param = True
    return message


@st.composite
def other_requests(draw) -> tuple[str, bytes]:
    """Any unary RPC but ModelInfer, with a message of its type (random names where it has any)."""
    rpc = draw(st.sampled_from([name for name in UNARY if name != "ModelInfer"]))
    method = SERVICE.methods_by_name[rpc]
    message = getattr(pb, method.input_type.name)()
    for field_ in method.input_type.fields:
        if field_.type == field_.TYPE_STRING and not field_.is_repeated:
            setattr(message, field_.name, draw(st.one_of(st.sampled_from(["digits", "", "1"]), _NAMES)))
    return rpc, message.SerializeToString()


# -- byte-level mutations --------------------------------------------------------------------------


def _seeds() -> list[bytes]:
    typed = good_request("typed")
    typed.ClearField("raw_input_contents")
    typed.inputs[0].contents.fp32_contents.extend(GOOD_ROWS.reshape(-1).tolist())
    seeds = [good_request().SerializeToString(), typed.SerializeToString()]
    with_outputs = good_request("outputs")
    with_outputs.outputs.add(name="logits")
    with_outputs.parameters["timeout"].int64_param = 1_000_000
    seeds.append(with_outputs.SerializeToString())
    seeds += [
        pb.ModelMetadataRequest(name="digits").SerializeToString(),
        pb.ModelReadyRequest(name="digits", version="1").SerializeToString(),
        b"",
    ]
    return seeds


SEEDS = _seeds()


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    """(rpc, bytes): a valid request of some RPC, mutated 1-4 times, sent to any RPC."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "splice", "varint"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif op == "duplicate":
            end = draw(st.integers(at, len(data)))
            data[at:at] = data[at:end] * draw(st.sampled_from([1, 2, 50]))
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data = data[:at] + other[draw(st.integers(0, len(other))) :]
        elif op == "varint":  # a length or tag byte to its extremes
            data[at:at] = bytes([0xFF] * draw(st.integers(1, 10)) + [draw(st.integers(0, 127))])
    rpc = draw(st.sampled_from([*UNARY, STREAM]))
    return rpc, bytes(data)


@st.composite
def cases(draw) -> tuple[str, bytes]:
    """(rpc, request bytes) for one call: structured, another RPC's, or mutated bytes."""
    kind = draw(st.sampled_from(["infer", "infer", "infer", "other", "mutated", "mutated"]))
    if kind == "infer":
        return draw(st.sampled_from(["ModelInfer", "ModelInfer", STREAM])), draw(infer_requests()).SerializeToString()
    if kind == "other":
        return draw(other_requests())
    return draw(mutated())
