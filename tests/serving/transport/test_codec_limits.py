"""The request codec and the transport's decoding order, without a server: every limit is checked
before the allocation it guards, the model's contract (datatype, shape) before any contents are
decoded, BYTES contents only for inputs the model declares BYTES (on a worker thread when large),
and client strings in messages are capped and escaped.

The model configs here are stand-ins with just what validation reads (a BYTES model: wave 2's
JPEG and text inputs, which no shipped model declares yet).
"""

from __future__ import annotations

import asyncio
import struct
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from guard.protocol import codec
from guard.protocol.errors import InvalidInput
from guard.protocol.limits import MAX_ECHO_CHARS, MAX_RANK, OFFLOAD_BYTES, echo
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.spec import TensorSpec
from guard.serving import validation
from guard.serving.transport.requests import EncodedRequest


def config(datatype: str = "FP32", shape: tuple[int, ...] = (1, 16, 16), outputs: int = 1):
    return SimpleNamespace(
        name="m",
        inputs=(TensorSpec("input", datatype, shape),),
        outputs=tuple(TensorSpec(f"out{i}", "FP32", (10,)) for i in range(outputs)),
        batching=SimpleNamespace(max_batch_size=32),
    )


def request(shape, datatype="FP32", raw: bytes | None = b"", name="input") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        message.raw_input_contents.append(raw)
    return message


def bytes_contents(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def decode(message: pb.ModelInferRequest, model=None, size: int | None = None):
    encoded = EncodedRequest(message, message.ByteSize() if size is None else size)
    return asyncio.run(encoded.decode(model or config()))


@pytest.mark.parametrize("shape", [[0, 2**62, 2**62], [0, 2**31, 2**31], [2**63 - 1], [0] * 3 + [2**40] * 2])
def test_shapes_numpy_cannot_describe_are_invalid_input(shape):
    for raw in (b"", None):  # raw contents, and typed contents (none: zero values for zero elements)
        with pytest.raises(InvalidInput, match="describes more than"):
            codec.decode_request(request(shape, raw=raw), None)


def test_rank_is_capped_before_the_shape_is_copied():
    with pytest.raises(InvalidInput, match=f"65 dimensions, at most {MAX_RANK}"):
        codec.decode_request(request([1] * 65, raw=b"\0\0\0\0"), None)
    array = codec.decode_request(request([1] * MAX_RANK, raw=b"\0\0\0\0"), None)[0].inputs["input"]
    assert array.shape == (1,) * MAX_RANK


def test_typed_overflow_is_invalid_input():
    message = request([1, 2], "UINT8", raw=None)
    message.inputs[0].contents.uint_contents.extend([7, 300])
    with pytest.raises(InvalidInput, match="contents.uint_contents holds values outside UINT8"):
        codec.decode_request(message, None)


def test_typed_floats_decode_like_raw_ones_even_with_unknown_fields():
    values = np.random.default_rng(0).random((2, 3), dtype=np.float32)
    typed = request([2, 3], raw=None)
    typed.inputs[0].contents.fp32_contents.extend(values.reshape(-1).tolist())
    np.testing.assert_array_equal(codec.decode_request(typed, None)[0].inputs["input"], values)
    # An unknown field inside the contents (field 15, varint 1): the fast path steps aside.
    odd = pb.ModelInferRequest.FromString(typed.SerializeToString())
    odd.inputs[0].contents.MergeFromString(b"\x78\x01")
    np.testing.assert_array_equal(codec.decode_request(odd, None)[0].inputs["input"], values)
    doubles = request([2, 3], "FP64", raw=None)
    doubles.inputs[0].contents.fp64_contents.extend(values.astype(np.float64).reshape(-1).tolist())
    np.testing.assert_array_equal(codec.decode_request(doubles, None)[0].inputs["input"], values)


def test_bytes_counts_the_contents_cannot_hold_fail_before_the_loop():
    with pytest.raises(InvalidInput, match="cannot hold 1000000000 elements"):
        codec.decode_request(request([1000000000], "BYTES", raw=b"\0" * 8), None)


def test_the_datatype_is_checked_before_bytes_contents_are_decoded(monkeypatch):
    decoded = []
    monkeypatch.setattr(codec, "decode_inputs", lambda *args: decoded.append(args))
    message = request([4, 1, 16, 16], "BYTES", raw=bytes_contents([b"x" * 300_000] * 4))
    with pytest.raises(InvalidInput, match="expected datatype FP32, got BYTES"):
        decode(message)
    assert decoded == []


def test_the_shape_is_checked_before_contents_are_decoded():
    # Contents that could never decode (3 bytes for 512 FP32 values): the shape error comes first.
    with pytest.raises(InvalidInput, match="dimension 1 is 2, expected 1"):
        decode(request([2, 2, 16, 16], raw=b"abc"))


def test_bytes_inputs_decode_for_a_model_that_declares_them(monkeypatch):
    threads = []
    real = codec.decode_inputs
    monkeypatch.setattr(codec, "decode_inputs", lambda *a: threads.append(threading.current_thread()) or real(*a))
    model = config("BYTES", ())
    small = [b"\xff\xd8 jpeg", b"", b"text"]
    inputs, outputs, datatypes = decode(request([3], "BYTES", raw=bytes_contents(small)), model)
    assert list(inputs["input"]) == small and datatypes == {"input": "BYTES"} and outputs == ()
    large = [bytes([i]) * (OFFLOAD_BYTES // 2) for i in range(3)]
    inputs, _, _ = decode(request([3], "BYTES", raw=bytes_contents(large)), model)
    assert list(inputs["input"]) == large
    main = threading.main_thread()
    assert threads[0] is main and threads[1] is not main  # the large one off the event loop
    typed = request([2], "BYTES", raw=None)
    typed.inputs[0].contents.bytes_contents.extend([b"a", b"bc"])
    assert list(decode(typed, model)[0]["input"]) == [b"a", b"bc"]


def test_outputs_are_declared_unique_and_read_no_further_than_needed():
    read = []

    def names(name, count):
        for _ in range(count):
            read.append(name)
            yield name

    model = config(outputs=2)
    with pytest.raises(InvalidInput, match="^requested output 'out0' appears more than once$"):
        validation.check_outputs(model, names("out0", 1_000_000))
    assert len(read) == 2
    with pytest.raises(InvalidInput, match="^requested output 'probs' does not exist: expected one of"):
        validation.check_outputs(model, ["out0", "probs"])
    assert validation.check_outputs(model, ["out1", "out0"]) == ("out1", "out0")
    read.clear()
    with pytest.raises(InvalidInput, match="^input 'input' appears more than once$"):
        validation.check_input_names(model, names("input", 1_000_000))
    assert len(read) == 2


def test_client_strings_in_messages_are_capped_and_escaped():
    assert echo("input") == "'input'"
    assert echo("a'b\\c\nd\x00") == "'a\\'b\\\\c\\nd\\x00'"
    shown = echo("n" * 4_000_000)
    assert len(shown) < MAX_ECHO_CHARS + 40 and shown.endswith("(4000000 characters)")
    with pytest.raises(InvalidInput) as info:
        decode(request([1, 1, 16, 16], name="x" * 4_000_000 + "\n"))
    assert len(info.value.message) < 500 and "\n" not in info.value.message
    for field in ("model_name", "model_version"):
        message = request([1, 1, 16, 16])
        setattr(message, field, "m" * 4_000_000)
        with pytest.raises(InvalidInput, match=f"{field} 'm+'... \\(4000000 characters\\) is longer"):
            codec.read_head(message, None)
        setattr(message, field, "digits\r\nguard_verdict=clean")
        with pytest.raises(InvalidInput, match="control characters"):
            codec.read_head(message, None)
