"""`guard serve` as a process: the access log it writes with --access-log (and only then), and
what SIGTERM does to requests that are already in the gateway."""

from __future__ import annotations

import queue
import signal
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import copy_demo
from tests.serving.helpers import edit_config, infer_input
from tests.serving.process import ServeProcess


def test_access_log_has_one_line_per_request_with_id_verdict_and_code(tmp_path, held_out):
    repository = copy_demo(tmp_path)
    with ServeProcess(repository, "--access-log") as guard, triton.InferenceServerClient(guard.grpc_url) as client:
        client.infer("digits", [infer_input(held_out[0][:1])], request_id="served-1")
        bad = np.full((1, 1, 16, 16), 3.0, np.float32)
        with pytest.raises(InferenceServerException):
            client.infer("digits", [infer_input(bad)], request_id="bad-range")
        with pytest.raises(InferenceServerException):
            client.infer("nope", [infer_input(held_out[0][:1])], request_id="no-model")
        served = guard.wait_for_log("id=served-1 ")
        rejected = guard.wait_for_log("id=bad-range ")
        unknown = guard.wait_for_log("id=no-model ")
    assert "guard.access: model=digits id=served-1 verdict=" in served and " code=OK ms=" in served
    assert "verdict=none code=INVALID_ARGUMENT" in rejected
    assert "model=nope" in unknown and "code=NOT_FOUND" in unknown


def test_without_the_flag_there_is_no_access_log(tmp_path, held_out):
    with ServeProcess(copy_demo(tmp_path)) as guard, triton.InferenceServerClient(guard.grpc_url) as client:
        client.infer("digits", [infer_input(held_out[0][:1])], request_id="quiet")
        time.sleep(0.2)  # what would have been logged is written before the answer; give the pipe a moment
        assert not [line for line in guard.lines if "guard.access" in line]


def health(url: str) -> int:
    with grpc.insecure_channel(url) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status


def test_sigterm_lets_queued_requests_finish_then_exits_cleanly(tmp_path, held_out):
    """Four requests wait in a 1.5 s batching window when SIGTERM arrives: all four are answered
    OK (none CANCELLED), and the process exits with status 0."""

    def change(table):
        table["batching"].update(max_queue_delay_microseconds=1_500_000, max_batch_size=32)

    repository = edit_config(copy_demo(tmp_path), change)
    answers: queue.Queue = queue.Queue()
    with ServeProcess(repository) as guard, triton.InferenceServerClient(guard.grpc_url) as client:
        assert health(guard.grpc_url) == health_pb2.HealthCheckResponse.SERVING
        for i in range(4):
            client.async_infer(
                "digits",
                [infer_input(held_out[0][i : i + 1])],
                lambda result, error: answers.put(error),
                client_timeout=30,
            )
        start = time.monotonic()
        while guard.metric('guard_queue_depth{model="digits"}') != 4:
            assert time.monotonic() - start < 10, "requests never queued"
            time.sleep(0.01)
        guard.signal(signal.SIGTERM)
        errors = [answers.get(timeout=30) for _ in range(4)]
        assert errors == [None] * 4, [e.status() for e in errors if e]
        assert guard.wait(timeout=30) == 0
