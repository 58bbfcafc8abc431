"""Upstream faults: down at start, killed under load and restarted (MLServer), slow (a fake that
sleeps: the one place a fake upstream stands in). No request hangs, every failure carries
UNAVAILABLE or DEADLINE_EXCEEDED, readiness follows the upstream, and the guard recovers."""

from __future__ import annotations

import collections
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.proto import inference_pb2_grpc as pb_grpc
from tests.backends.remote.conftest import drop_detectors, fake_upstream, remote_repository
from tests.conftest import DEMO_REPOSITORY, running_gateway

CLIENT_TIMEOUT = 5.0  # a request that takes this long counts as hung: the guard's own limit is 1 s


def health(target: str, service: str = "digits") -> int:
    with grpc.insecure_channel(target) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
        )


def ready(client: triton.InferenceServerClient) -> bool:
    return client.is_server_ready() and client.is_model_ready("digits")


def wait_for(condition, timeout: float = 10.0, period: float = 0.02) -> float:
    """Seconds until condition() held; fails after timeout."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition never held"
        time.sleep(period)
    return time.monotonic() - start


class Load:
    """Closed-loop clients on their own threads, each request with a client deadline; outcome and
    latency per request, by completion time."""

    def __init__(self, target: str, x: np.ndarray, workers: int = 4):
        request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[x[:1].tobytes()])
        request.inputs.add(name="input", datatype="FP32", shape=[1, *x.shape[1:]])
        self.request, self.target = request, target
        self.outcomes: list[tuple[float, str, float]] = []  # (finished at, status name, seconds)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    stub.ModelInfer(self.request, timeout=CLIENT_TIMEOUT)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                self.outcomes.append((time.monotonic(), code, time.monotonic() - start))
                if code != "OK":
                    time.sleep(0.005)  # failures are fast; do not spin

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT + 5)

    def first_ok_after(self, moment: float) -> float | None:
        return min((t for t, code, _ in self.outcomes if code == "OK" and t > moment), default=None)


def test_upstream_down_at_start_then_killed_under_load_and_restarted(tmp_path, held_out):
    from benchmarks.peers.mlserver import MLServerProcess, free_port

    x = held_out[0]
    peer = MLServerProcess(DEMO_REPOSITORY / "digits" / "model.onnx", "digits", grpc_port=free_port())
    repository = remote_repository(tmp_path, peer.grpc_target, extra="timeout_s = 1.0\n")
    try:
        # Down at start: the gateway starts, reports not ready, and fails requests at once.
        with running_gateway(repository) as front, triton.InferenceServerClient(front.grpc_url) as client:
            assert client.is_server_live() and not ready(client)
            assert health(front.grpc_url) == health_pb2.HealthCheckResponse.NOT_SERVING
            service = "inference.GRPCInferenceService"
            assert health(front.grpc_url, service) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert health(front.grpc_url, "") == health_pb2.HealthCheckResponse.SERVING  # alive: no restart
            stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(front.grpc_url))
            load = Load(front.grpc_url, x)
            seconds = []
            for _ in range(20):  # with the circuit open each costs about a gRPC round trip
                start = time.monotonic()
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(load.request, timeout=CLIENT_TIMEOUT)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "upstream model 'digits'" in info.value.details()
                seconds.append(time.monotonic() - start)
            # Failing fast, not waiting out the upstream timeout (1 s): every call well before it,
            # the typical one far before (a single slow call on a busy 2-core host is scheduling).
            assert max(seconds) < 0.9 and sorted(seconds)[len(seconds) // 2] < 0.1, seconds
            peer.start()
            wait_for(lambda: ready(client), timeout=3)
            wait_for(lambda: health(front.grpc_url) == health_pb2.HealthCheckResponse.SERVING, timeout=1)

            # Killed under load, then restarted on the same port.
            with load:
                wait_for(lambda: load.first_ok_after(0) is not None)
                time.sleep(0.5)
                peer.kill()
                killed = time.monotonic()
                wait_for(lambda: not ready(client), timeout=3)
                wait_for(lambda: health(front.grpc_url) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=1)
                time.sleep(0.5)
                peer.start()  # returns once MLServer answers ModelReady
                restarted = time.monotonic()
                wait_for(lambda: load.first_ok_after(restarted) is not None, timeout=5)
                time.sleep(0.3)
            recovered = load.first_ok_after(killed)
            assert ready(client)

        codes = collections.Counter(code for _, code, _ in load.outcomes)
        hung = [seconds for _, _, seconds in load.outcomes if seconds >= 2.0]
        assert not hung, f"requests hung: {hung}"
        assert set(codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, codes
        assert codes["OK"] and codes["UNAVAILABLE"], codes
        # MLServer restarts in seconds, so the first success after the kill marks the recovery.
        assert recovered is not None
        print(f"\noutcomes {dict(codes)}; first success {recovered - restarted:+.3f} s after MLServer reported ready")
    finally:
        peer.close()


@pytest.fixture
def slow_upstream():
    with fake_upstream() as (fake, target):
        yield fake, target


def test_the_remaining_deadline_travels_upstream(tmp_path, slow_upstream, held_out):
    """The request waits 300 ms in the guard's queue; the upstream is told what is left of the
    client's 2 s, not the 2 s. A slow upstream ends in DEADLINE_EXCEEDED at the deadline."""
    fake, target = slow_upstream

    def edit(text: str) -> str:
        return drop_detectors(text).replace("max_queue_delay_microseconds = 0", "max_queue_delay_microseconds = 300000")

    with running_gateway(remote_repository(tmp_path, target, edit=edit, extra="timeout_s = 30.0\n")) as front:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(front.grpc_url))
        request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[held_out[0][:1].tobytes()])
        request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
        stub.ModelInfer(request, timeout=2.0)
        # grpc-timeout travels in whole milliseconds, rounded up to 10 ms between 1 and 10 s, on
        # each of the two hops (client -> guard -> upstream): up to 20 ms above what is left.
        assert 1.0 < fake.remaining[-1] <= 2.0 - 0.3 + 0.02

        # The v2 `timeout` parameter (1 s) sets the deadline, not the client (10 s): the answer is
        # the guard's own, after the upstream was given what was left of the second.
        fake.delay = 3.0
        request.parameters["timeout"].int64_param = 1_000_000
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "did not answer within" in info.value.details()
        assert fake.remaining[-1] <= 1.0 - 0.3 + 0.001  # under 1 s: whole milliseconds, rounded up


def test_timeout_s_bounds_a_request_without_a_deadline(tmp_path, slow_upstream, held_out):
    fake, target = slow_upstream
    fake.delay = 3.0
    with running_gateway(remote_repository(tmp_path, target, edit=drop_detectors, extra="timeout_s = 0.5\n")) as front:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(front.grpc_url))
        request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[held_out[0][:1].tobytes()])
        request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)  # no client deadline
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "did not answer within 500 ms" in info.value.details()
        assert time.monotonic() - start < 2.0
        assert fake.remaining[-1] <= 0.5 + 0.01  # grpc-timeout travels rounded up to its unit
