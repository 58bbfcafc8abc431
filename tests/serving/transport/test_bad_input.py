"""Every malformed request gets a precise error, and the gateway keeps serving afterwards.

Requests are built with tritonclient's own v2 messages and sent through a plain gRPC stub, so
the test can send what no well-behaved client library would.
"""

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.conftest import running_gateway

GOOD = np.full((1, 1, 16, 16), 0.5, dtype=np.float32)


@pytest.fixture(scope="module")
def small_gateway():
    with running_gateway(max_message_bytes=256 * 1024) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(small_gateway):
    with grpc.insecure_channel(small_gateway.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def request(array=GOOD, name="input", datatype="FP32", shape=None, raw=True, model="digits", **extra):
    message = pb.ModelInferRequest(model_name=model, **extra)
    tensor = message.inputs.add(name=name, datatype=datatype, shape=list(array.shape if shape is None else shape))
    if raw:
        message.raw_input_contents.append(array.tobytes())
    else:
        tensor.contents.fp32_contents.extend(array.reshape(-1).tolist())
    return message


def two_inputs():
    message = request()
    message.inputs.add(name="extra", datatype="FP32", shape=[1])
    message.raw_input_contents.append(np.zeros(1, np.float32).tobytes())
    return message


def mixed():
    message = request()
    message.inputs[0].contents.fp32_contents.append(1.0)
    return message


def missing_input():
    return pb.ModelInferRequest(model_name="digits")


def nan_input():
    bad = GOOD.copy()
    bad[0, 0, 3, 3] = np.nan
    return request(bad)


def inf_typed():
    bad = GOOD.copy()
    bad[0, 0, 0, 0] = np.inf
    return request(bad, raw=False)


def duplicate_input():
    message = request()
    message.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
    message.raw_input_contents.append(GOOD.tobytes())
    return message


def typed_overflow():
    message = pb.ModelInferRequest(model_name="digits")
    message.inputs.add(name="input", datatype="UINT8", shape=[1, 2]).contents.uint_contents.extend([7, 300])
    return message


def wrong_typed_field():
    message = request(raw=False)
    message.inputs[0].contents.ClearField("fp32_contents")
    message.inputs[0].contents.fp64_contents.extend([0.5] * 256)
    return message


CASES = {
    "unknown model": (lambda: request(model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
    "unknown version": (lambda: request(model_version="7"), grpc.StatusCode.NOT_FOUND, "no version '7'"),
    "wrong datatype": (
        lambda: request(GOOD.astype(np.float64), datatype="FP64"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'input': expected datatype FP32, got FP64",
    ),
    "unknown datatype": (
        lambda: request(datatype="FP8"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unsupported datatype 'FP8'",
    ),
    "wrong rank": (
        lambda: request(GOOD.reshape(1, 16, 16)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected rank 4 with shape [N, 1, 16, 16], got shape [1, 16, 16]",
    ),
    "wrong shape": (
        lambda: request(np.zeros((1, 1, 16, 8), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "^input 'input': expected shape [N, 1, 16, 16], got [1, 1, 16, 8] (dimension 3 is 8, expected 16)",
    ),
    "empty batch": (
        lambda: request(np.zeros((0, 1, 16, 16), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "^input 'input': expected at least one row in the batch dimension",
    ),
    "batch too large": (
        lambda: request(np.zeros((33, 1, 16, 16), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "^input 'input': batch dimension 33 exceeds the model's max_batch_size 32",
    ),
    "byte length": (
        lambda: request(GOOD, shape=[2, 1, 16, 16]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected 2048 bytes of raw contents for FP32 shape [2, 1, 16, 16], got 1024",
    ),
    "typed count": (
        lambda: request(GOOD, shape=[2, 1, 16, 16], raw=False),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 512 values, contents.fp32_contents has 256",
    ),
    "typed wrong field": (
        wrong_typed_field,
        grpc.StatusCode.INVALID_ARGUMENT,
        "datatype FP32 expects its values in contents.fp32_contents",
    ),
    "mixed raw and typed": (mixed, grpc.StatusCode.INVALID_ARGUMENT, "typed contents and raw_input_contents are mixed"),
    "missing input": (
        missing_input,
        grpc.StatusCode.INVALID_ARGUMENT,
        "^input 'input' is missing: model 'digits' expects inputs ['input']",
    ),
    "duplicate input": (duplicate_input, grpc.StatusCode.INVALID_ARGUMENT, "^input 'input' appears more than once"),
    # The datatype is checked against the model before any contents are decoded (the overflow
    # itself: tests/serving/transport/test_codec_limits.py).
    "typed overflow": (
        typed_overflow,
        grpc.StatusCode.INVALID_ARGUMENT,
        "^input 'input': expected datatype FP32, got UINT8",
    ),
    "extra input": (
        two_inputs,
        grpc.StatusCode.INVALID_ARGUMENT,
        "^unexpected input 'extra' for model 'digits': expected inputs ['input']",
    ),
    "wrong input name": (lambda: request(name="image"), grpc.StatusCode.INVALID_ARGUMENT, "unexpected input 'image'"),
    "NaN": (nan_input, grpc.StatusCode.INVALID_ARGUMENT, "^input 'input': expected finite values, got NaN or Inf"),
    "Inf typed": (inf_typed, grpc.StatusCode.INVALID_ARGUMENT, "expected finite values"),
    "out of range": (
        lambda: request(GOOD * 4),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected values in [0, 1], got values in [2, 2]",
    ),
    "negative values": (lambda: request(GOOD - 1), grpc.StatusCode.INVALID_ARGUMENT, "expected values in [0, 1]"),
    "unknown output": (
        lambda: request(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probs")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "^requested output 'probs' does not exist: expected one of ['logits']",
    ),
    "oversized message": (
        lambda: request(np.zeros((32, 3, 32, 32), np.float32), shape=[32, 1, 16, 16]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_precise_error_and_server_keeps_serving(stub, case):
    build, code, text = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(build(), timeout=10)
    assert info.value.code() == code, info.value.details()
    # "^...": the whole message, from its start (what a client's log line shows first).
    details = info.value.details()
    assert details == text[1:] if text.startswith("^") else text in details, details
    healthy = stub.ModelInfer(request(), timeout=10)
    assert healthy.parameters["guard_verdict"].string_param in ("clean", "adversarial")
    assert np.frombuffer(healthy.raw_output_contents[0], np.float32).shape == (10,)


def test_typed_contents_are_accepted(stub):
    raw = stub.ModelInfer(request(), timeout=10)
    typed = stub.ModelInfer(request(raw=False), timeout=10)
    assert raw.raw_output_contents == typed.raw_output_contents


def test_negative_timeout_parameter_is_rejected(stub):
    message = request()
    message.parameters["timeout"].int64_param = -5
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(message, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameter 'timeout'" in info.value.details()
