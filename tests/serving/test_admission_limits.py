"""Admission on a live gateway: the server-wide concurrency limit (`--max-concurrency`) refuses with
RESOURCE_EXHAUSTED before a request is even parsed, a full model queue refuses with UNAVAILABLE
before the request's tensors are decoded or validated, both with a retry hint (the gRPC retry
pushback in the trailing metadata, and in the message), never a bare CANCELLED; stream requests
count against the limit, and the metadata RPCs are never refused.

A gate detector holds the running batch, so requests stay in flight as long as the test wants.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from guard.protocol.limits import MAX_CONCURRENCY
from guard.protocol.proto import inference_pb2 as pb
from guard.serving.settings import ServerSettings
from guard.tools.cli import build_parser
from tests.conftest import running_gateway
from tests.serving.helpers import gated_repository, queue_depth, requests_total
from tests.serving.test_admission import wait_until

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
READY = "/inference.GRPCInferenceService/ServerReady"
PUSHBACK = "grpc-retry-pushback-ms"
TIMEOUT = 30.0


def infer_request(request_id: str = "", shape=(1, 1, 16, 16)) -> bytes:
    message = pb.ModelInferRequest(model_name="digits", id=request_id)
    message.inputs.add(name="input", datatype="FP32", shape=list(shape))
    message.raw_input_contents.append(np.full(shape, 0.5, np.float32).tobytes())
    return message.SerializeToString()


def refusal(channel, data: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER)(data, timeout=TIMEOUT)
    return info.value


def pushback_ms(error: grpc.RpcError) -> int:
    hints = [value for key, value in error.trailing_metadata() or () if key == PUSHBACK]
    assert len(hints) == 1, error.trailing_metadata()
    return int(hints[0])


def test_the_concurrency_limit_refuses_before_parsing_with_a_retry_hint(tmp_path, gate):
    """Limit 2: one request runs (held by the gate), one waits in the queue; the third is refused
    with RESOURCE_EXHAUSTED, even when it is not a protobuf at all (nothing was parsed)."""
    with (
        running_gateway(gated_repository(tmp_path), max_concurrency=2) as srv,
        gate,
        grpc.insecure_channel(srv.grpc_url) as channel,
    ):
        running = channel.unary_unary(INFER).future(infer_request("running"), timeout=TIMEOUT)
        assert gate.entered.wait(10)
        queued = channel.unary_unary(INFER).future(infer_request("queued"), timeout=TIMEOUT)
        wait_until(lambda: queue_depth(srv) == 1)
        for data in (infer_request("third"), b"\xff\xff\xff"):
            error = refusal(channel, data)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert "--max-concurrency 2" in error.details()
            hint = pushback_ms(error)
            assert hint >= 10 and f"retry in {hint} ms" in error.details()
        # A stream's request counts against the same limit: an error answer, the stream goes on.
        answers = [
            pb.ModelStreamInferResponse.FromString(a)
            for a in channel.stream_stream(STREAM)(iter([infer_request("streamed")]), timeout=TIMEOUT)
        ]
        assert len(answers) == 1 and answers[0].infer_response.id == "streamed"
        assert answers[0].infer_response.parameters["guard_status"].string_param == "RESOURCE_EXHAUSTED"
        assert "retry in" in answers[0].error_message
        # Readiness is never refused.
        assert pb.ServerReadyResponse.FromString(channel.unary_unary(READY)(b"", timeout=TIMEOUT)).ready
        gate.open()
        for call, request_id in ((running, "running"), (queued, "queued")):
            assert pb.ModelInferResponse.FromString(call.result()).id == request_id
        # The places are given back: the limit admits again.
        assert pb.ModelInferResponse.FromString(channel.unary_unary(INFER)(infer_request("after"), timeout=TIMEOUT))


def test_a_full_queue_refuses_before_decoding_with_a_retry_hint(tmp_path, gate):
    """Queue of 1, full: a malformed request (wrong shape, contents that could never decode) is
    refused as UNAVAILABLE, not INVALID_ARGUMENT, because room is decided before any decoding or
    validation; the refusal carries the pushback and is counted once in the model's metrics."""
    with (
        running_gateway(gated_repository(tmp_path, max_queue_size=1)) as srv,
        gate,
        grpc.insecure_channel(srv.grpc_url) as channel,
    ):
        running = channel.unary_unary(INFER).future(infer_request("running"), timeout=TIMEOUT)
        assert gate.entered.wait(10)
        queued = channel.unary_unary(INFER).future(infer_request("queued"), timeout=TIMEOUT)
        wait_until(lambda: queue_depth(srv) == 1)
        bad = pb.ModelInferRequest.FromString(infer_request("bad", (1, 1, 8, 8)))
        bad.raw_input_contents[0] = b"abc"
        for data in (infer_request("third"), bad.SerializeToString()):
            error = refusal(channel, data)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            assert "Exceeds maximum queue size (1 requests)" in error.details()
            assert f"retry in {pushback_ms(error)} ms" in error.details()
        assert requests_total(srv, "UNAVAILABLE") == 2
        gate.open()
        for call in (running, queued):
            call.result()


def test_the_setting_and_the_command_line():
    assert ServerSettings(repository=".").max_concurrency == MAX_CONCURRENCY == 1024
    assert build_parser().parse_args(["serve", "--max-concurrency", "7"]).max_concurrency == 7
    assert build_parser().parse_args(["serve"]).max_concurrency == MAX_CONCURRENCY
