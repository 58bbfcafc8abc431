"""ModelStreamInfer under a hostile client: a bad frame is one error answer (with the request's id
when the frame parsed) and the stream goes on; a failing reader ends the stream instead of leaving
it waiting; a client that floods a stream without reading its answers is held back by gRPC flow
control rather than buffered; and one stream's flood cannot fill the queue every client shares.

Raw gRPC channels (tritonclient would hide the frames); a gate detector holds batches where a test
needs requests to stay queued, so the assertions are about counts and order, never about speed.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from guard.protocol.limits import STREAM_IN_FLIGHT
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.spec import TensorSpec
from guard.protocol.types import InferResponse
from guard.serving.transport.servicer import InferenceServicer
from tests.conftest import running_gateway
from tests.serving.helpers import gated_repository, queue_depth, requests_total

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
INFER = "/inference.GRPCInferenceService/ModelInfer"
X = np.full((1, 1, 16, 16), 0.5, dtype=np.float32)
# Far above anything the gateway does on its own: a stream that runs into it has hung.
CLIENT_TIMEOUT = 30.0


def frame(request_id: str, shape=(1, 1, 16, 16), data: np.ndarray = X) -> bytes:
    message = pb.ModelInferRequest(model_name="digits", id=request_id)
    message.inputs.add(name="input", datatype="FP32", shape=list(shape))
    message.raw_input_contents.append(data.tobytes())
    return message.SerializeToString()


def answers_of(channel, frames) -> list[pb.ModelStreamInferResponse]:
    stream = channel.stream_stream(STREAM)
    return [pb.ModelStreamInferResponse.FromString(a) for a in stream(iter(frames), timeout=CLIENT_TIMEOUT)]


def wait_until(condition, timeout: float = 20.0) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition never held"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def gateway():
    with running_gateway() as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(gateway):
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        yield channel


def test_a_frame_that_is_not_a_request_is_one_error_answer_and_the_stream_goes_on(channel):
    frames = [frame(f"a{i}") for i in range(5)] + [b"\xff\xff\xff"] + [frame(f"b{i}") for i in range(5)]
    answers = answers_of(channel, frames)
    assert len(answers) == 11
    errors = [a for a in answers if a.error_message]
    assert len(errors) == 1 and "not a valid inference.ModelInferRequest" in errors[0].error_message
    assert errors[0].infer_response.parameters["guard_status"].string_param == "INVALID_ARGUMENT"
    served = {a.infer_response.id for a in answers if not a.error_message}
    assert served == {f"a{i}" for i in range(5)} | {f"b{i}" for i in range(5)}


def test_error_answers_carry_the_request_id_and_status(channel):
    rank_65 = pb.ModelInferRequest(model_name="digits", id="rank-65")
    rank_65.inputs.add(name="input", datatype="FP32", shape=[1] * 65)
    rank_65.raw_input_contents.append(b"\0\0\0\0")
    frames = [rank_65.SerializeToString(), frame("shape-8", (1, 1, 8, 8), X[..., :8, :8].copy()), frame("fine")]
    answers = {a.infer_response.id: a for a in answers_of(channel, frames)}
    assert set(answers) == {"rank-65", "shape-8", "fine"}
    for request_id in ("rank-65", "shape-8"):
        answer = answers[request_id]
        assert answer.error_message and answer.infer_response.model_name == "digits"
        assert answer.infer_response.parameters["guard_status"].string_param == "INVALID_ARGUMENT"
    assert "at most 16" in answers["rank-65"].error_message
    assert not answers["fine"].error_message


class _FailingReads:
    """A stream's request iterator that yields `good` frames, then fails as a broken read would."""

    def __init__(self, frames: list[bytes]):
        self.frames = list(frames)

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if not self.frames:
            raise RuntimeError("the transport failed mid-stream")
        return self.frames.pop(0)


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self):
        self.aborted = None

    def time_remaining(self):
        return None

    def peer(self):  # the caller's identity, without authentication (guard.serving.auth)
        return "ipv4:127.0.0.1:50000"

    async def abort(self, code, details="", metadata=()):
        self.aborted = (code, details)
        raise _Aborted(details)


class _EchoDataPlane:
    async def infer(self, request, datatypes, encoded=None):
        config = SimpleNamespace(
            name="digits",
            inputs=(TensorSpec("input", "FP32", (1, 16, 16)),),
            outputs=(TensorSpec("logits", "FP32", (10,)),),
            batching=SimpleNamespace(max_batch_size=32),
        )
        inputs, _, _ = await encoded.decode(config)
        return InferResponse("digits", "1", request.id, [("logits", np.zeros((1, 10), np.float32))])


def test_a_failing_reader_ends_the_stream_after_the_answers_due():
    async def run():
        servicer, context = InferenceServicer(_EchoDataPlane()), _Context()
        got = []
        with pytest.raises(_Aborted):
            async for answer in servicer.ModelStreamInfer(_FailingReads([frame("one"), frame("two")]), context):
                got.append(answer)
        return got, context

    answers, context = asyncio.run(asyncio.wait_for(run(), 20))
    assert sorted(a.infer_response.id for a in answers) == ["one", "two"]
    assert context.aborted[0] == grpc.StatusCode.INTERNAL and "transport failed mid-stream" in context.aborted[1]


def test_a_stream_nobody_reads_stops_being_read(gateway, channel):
    """5,000 requests on a stream whose answers the client never reads: the gateway answers a
    bounded number (its window, plus what the client's flow-control window holds) and then stops
    reading, so the client's sends block instead of the gateway's memory growing."""

    def requests():
        for i in range(5000):
            yield frame(f"flood-{i}")

    before = requests_total(gateway, "OK")
    # Without BDP probing the client's receive window stays at gRPC's 64 KiB: it fills with a few
    # hundred answers (with it, gRPC grows the window to megabytes, and 5,000 answers fit).
    quiet = grpc.insecure_channel(gateway.grpc_url, options=[("grpc.http2.bdp_probe", 0)])
    call = quiet.stream_stream(STREAM)(requests(), timeout=CLIENT_TIMEOUT)  # never iterated
    try:
        wait_until(lambda: requests_total(gateway, "OK") - before >= STREAM_IN_FLIGHT)
        plateau, still = None, 0
        for _ in range(150):  # the count stops moving: unchanged for a second
            time.sleep(0.2)
            now = requests_total(gateway, "OK") - before
            still = still + 1 if now == plateau else 0
            plateau = now
            if still >= 5:
                break
        time.sleep(2.0)
        final = requests_total(gateway, "OK") - before
        # The window (64) plus the answers the client's 64 KiB receive window holds; the rest of the
        # 5,000 waits in gRPC's own flow-control buffers, whose size gRPC bounds, or at the client.
        # A gateway still reading would have answered thousands more by now; on a starved host a
        # stall can pass for the plateau, so a few more answers after it are allowed, not a window.
        assert final < 1000 and final - plateau < STREAM_IN_FLIGHT
        assert pb.ModelInferResponse.FromString(channel.unary_unary(INFER)(frame("other"), timeout=10)).id == "other"
    finally:
        call.cancel()
        quiet.close()


def test_one_stream_cannot_fill_the_shared_queue(tmp_path, gate):
    """Queue of 128, one batch at a time, the running one held: a stream of 300 requests holds at
    most its window (64) in the queue, and another client's request is still queued, then served."""
    repository = gated_repository(tmp_path, max_queue_size=128)
    with running_gateway(repository) as srv, gate, grpc.insecure_channel(srv.grpc_url) as channel:
        answers: queue.Queue = queue.Queue()

        def consume():
            for answer in channel.stream_stream(STREAM)(
                iter(frame(f"s{i}") for i in range(300)), timeout=CLIENT_TIMEOUT
            ):
                answers.put(pb.ModelStreamInferResponse.FromString(answer))

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        assert gate.entered.wait(10)
        wait_until(lambda: queue_depth(srv) == STREAM_IN_FLIGHT - 1)
        time.sleep(0.5)
        assert queue_depth(srv) == STREAM_IN_FLIGHT - 1  # the stream holds no more than its window
        other = channel.unary_unary(INFER).future(frame("other"), timeout=CLIENT_TIMEOUT)
        wait_until(lambda: queue_depth(srv) == STREAM_IN_FLIGHT)
        gate.open()
        assert pb.ModelInferResponse.FromString(other.result()).id == "other"
        reader.join(CLIENT_TIMEOUT)
        got = [answers.get_nowait() for _ in range(answers.qsize())]
        assert len(got) == 300 and not [a.error_message for a in got if a.error_message]
        assert requests_total(srv, "UNAVAILABLE") == 0
