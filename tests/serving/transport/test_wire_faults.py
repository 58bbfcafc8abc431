"""Client faults a hostile client sends on the wire get precise statuses from a live gateway, never
INTERNAL or UNKNOWN, and cost the gateway no more than refusing them: bytes that are not a protobuf
on every RPC, shapes numpy cannot describe, a rank past the cap, an output named a million times,
megabytes of BYTES for an FP32 input, megabyte names. None of it writes a traceback to the log.

Raw channel (no client library), one gateway for the module.
"""

from __future__ import annotations

import logging
import struct

import grpc
import numpy as np
import pytest

from guard.protocol.limits import MAX_ECHO_CHARS, MAX_PARAMETER_BYTES, MAX_PARAMETERS
from guard.protocol.proto import inference_pb2 as pb
from guard.serving.transport import servicer, streams
from tests.conftest import running_gateway

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
UNARY = [m.name for m in SERVICE.methods if not (m.client_streaming or m.server_streaming)]
GOOD = np.full((1, 1, 16, 16), 0.5, dtype=np.float32)


@pytest.fixture(scope="module")
def gateway():
    with running_gateway() as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(gateway):
    with grpc.insecure_channel(gateway.grpc_url, options=[("grpc.max_send_message_length", -1)]) as channel:
        yield channel


def call(channel, rpc: str, data: bytes) -> grpc.RpcError | bytes:
    try:
        return channel.unary_unary(f"/{SERVICE.full_name}/{rpc}")(data, timeout=60)
    except grpc.RpcError as exc:
        return exc


def good(**fields) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="digits", **fields)
    message.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
    message.raw_input_contents.append(GOOD.tobytes())
    return message


def refused(channel, message: pb.ModelInferRequest | bytes, rpc: str = "ModelInfer") -> grpc.RpcError:
    data = message if isinstance(message, bytes) else message.SerializeToString()
    answer = call(channel, rpc, data)
    assert isinstance(answer, grpc.RpcError), f"{rpc} served a bad request"
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT, (answer.code(), answer.details()[:300])
    return answer


def still_serving(channel) -> None:
    response = pb.ModelInferResponse.FromString(call(channel, "ModelInfer", good().SerializeToString()))
    assert np.frombuffer(response.raw_output_contents[0], np.float32).shape == (10,)


@pytest.mark.parametrize("rpc", UNARY)
def test_bytes_that_are_not_a_protobuf_are_invalid_argument_on_every_rpc(channel, rpc):
    message_type = SERVICE.methods_by_name[rpc].input_type.full_name
    for data in (b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 3):
        answer = refused(channel, data, rpc)
        assert rpc in answer.details() and message_type in answer.details()
    still_serving(channel)


@pytest.mark.parametrize("shape", [[0, 2**62, 2**62], [1] * 65, [0, 2**31, 2**31, 1]])
def test_shapes_numpy_cannot_describe_are_invalid_argument(channel, shape):
    message = pb.ModelInferRequest(model_name="digits")
    message.inputs.add(name="input", datatype="FP32", shape=shape)
    message.raw_input_contents.append(b"" if 0 in shape else b"\0\0\0\0")
    details = refused(channel, message).details()
    assert "describes more than" in details or "dimensions, at most 16" in details
    typed = pb.ModelInferRequest(model_name="digits")
    typed.inputs.add(name="input", datatype="FP32", shape=shape)
    refused(channel, typed)
    still_serving(channel)


def test_outputs_named_a_million_times_are_refused(channel):
    message = good()
    for _ in range(1_000_000):
        message.outputs.add(name="logits")
    assert "requested output 'logits' appears more than once" in refused(channel, message).details()
    message = good()
    message.outputs.add(name="logits")
    message.outputs.add(name="probs")
    assert "requested output 'probs' does not exist" in refused(channel, message).details()
    still_serving(channel)


def test_parameters_past_their_caps_are_refused_before_the_message_is_parsed(channel, monkeypatch):
    """A million parameters (16 MB) are counted on the wire and refused before protobuf builds them
    (parsing them held the event loop for a second); so are parameters over MAX_PARAMETER_BYTES."""
    parsed: list[str] = []
    real = servicer.parse

    def counting(message_type, data, rpc):
        parsed.append(rpc)
        return real(message_type, data, rpc)

    monkeypatch.setattr(servicer, "parse", counting)
    monkeypatch.setattr(streams, "parse", counting)
    many = good()
    for i in range(1_000_000):
        many.parameters[f"p{i}"].int64_param = i
    details = refused(channel, many).details()
    assert f"more than {MAX_PARAMETERS} parameters, at most {MAX_PARAMETERS} are accepted" in details
    large = good()
    large.parameters["blob"].string_param = "x" * MAX_PARAMETER_BYTES
    assert f"more than {MAX_PARAMETER_BYTES} bytes" in refused(channel, large).details()
    answers = channel.stream_stream(f"/{SERVICE.full_name}/ModelStreamInfer")(iter([many.SerializeToString()]))
    (answer,) = [pb.ModelStreamInferResponse.FromString(a) for a in answers]
    assert f"more than {MAX_PARAMETERS} parameters" in answer.error_message
    assert parsed == []  # none of them was parsed
    most = good()
    for i in range(MAX_PARAMETERS):
        most.parameters[f"p{i}"].int64_param = i
    assert pb.ModelInferResponse.FromString(call(channel, "ModelInfer", most.SerializeToString())).outputs
    assert parsed == ["ModelInfer"]


def test_bytes_for_an_fp32_input_are_refused_by_datatype_before_decoding(channel):
    """8 MB of BYTES elements (malformed ones: decoding would fail differently) for an FP32 input."""
    message = pb.ModelInferRequest(model_name="digits")
    message.inputs.add(name="input", datatype="BYTES", shape=[2_000_000, 1, 1, 1])
    message.raw_input_contents.append(struct.pack("<I", 0) * 1_999_999 + struct.pack("<I", 9))
    assert "expected datatype FP32, got BYTES" in refused(channel, message).details()
    still_serving(channel)


@pytest.mark.parametrize("field", ["model_name", "model_version", "input name", "output name", "timeout"])
@pytest.mark.parametrize("huge", ["n" * (4 * 1024 * 1024), "\r\nn" + "n" * (4 * 1024 * 1024)], ids=["plain", "newline"])
def test_megabyte_client_strings_are_not_echoed(channel, field, huge):
    message = good()
    if field == "input name":
        message.inputs[0].name = huge
    elif field == "output name":
        message.outputs.add(name=huge)
    elif field == "timeout":
        message.parameters["timeout"].string_param = huge
    else:
        setattr(message, field, huge)
    details = refused(channel, message).details()
    assert len(details) < MAX_ECHO_CHARS + 300 and "\n" not in details, details[:400]
    still_serving(channel)


def test_client_faults_write_no_traceback(channel, caplog):
    caplog.set_level(logging.DEBUG)
    for _ in range(50):
        refused(channel, b"\xff\xff\xff")
        refused(channel, b"\xff\xff\xff", "ModelMetadata")
        message = pb.ModelInferRequest(model_name="digits")
        message.inputs.add(name="input", datatype="FP32", shape=[0, 2**62, 2**62])
        message.raw_input_contents.append(b"")
        refused(channel, message)
    noisy = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert noisy == []
    assert len([r for r in caplog.records if r.name.startswith("guard.serving.transport")]) <= 1
