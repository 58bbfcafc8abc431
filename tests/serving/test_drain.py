"""A graceful stop answers every request a client sent: OK while the gateway drains, UNAVAILABLE only
once it no longer accepts calls, never CANCELLED (which a client cannot tell from its own cancel).

Under load: `guard serve` as a process, client threads sending back to back with tritonclient,
SIGTERM in the middle. Health turns NOT_SERVING at once on every service name while requests are
still served for the drain period; then the process stops accepting and exits 0 well within the
exit timeout. The batcher drains its queue instead of failing it; only what still waits at the
exit timeout fails, with UNAVAILABLE; a second SIGTERM stops at once.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guard.protocol.errors import QueueFull
from guard.protocol.proto import inference_pb2 as pb
from guard.serving.batching import DynamicBatcher
from guard.serving.model_config import BatchingConfig
from guard.serving.server import ABORT_GRACE, SERVICE
from tests.conftest import DEMO_REPOSITORY, running_gateway
from tests.serving.helpers import gated_repository, infer_input, queue_depth
from tests.serving.process import ServeProcess, Traffic, wait_until

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DRAIN = 3.0
EXIT_TIMEOUT = 20.0


def health(url: str, service: str) -> int:
    with grpc.insecure_channel(url) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        )


def test_sigterm_under_load_answers_every_request_ok_or_unavailable_and_none_cancelled(held_out):
    with ServeProcess(
        DEMO_REPOSITORY, "--drain-seconds", str(DRAIN), "--exit-timeout-seconds", str(EXIT_TIMEOUT)
    ) as guard:
        with Traffic(guard.grpc_url, held_out[0][:64], threads=12) as traffic:
            traffic.wait_for(200)
            signalled = time.monotonic()
            guard.signal(signal.SIGTERM)
            names = ("", SERVICE, "digits", "digits_fp32")
            wait_until(
                lambda: all(health(guard.grpc_url, name) == NOT_SERVING for name in names),
                DRAIN / 2,
                "NOT_SERVING on every service name",
            )
            traffic.wait_for(50)  # ...while requests are still answered
            assert guard.wait(timeout=EXIT_TIMEOUT + 5) == 0
            exited = time.monotonic()
            wait_until(lambda: traffic.codes(sent_after=exited)["UNAVAILABLE"] > 0, 10, "clients see the server gone")
    codes = traffic.codes()
    assert codes["CANCELLED"] == 0 and set(codes) <= {"OK", "UNAVAILABLE"}, codes
    # Everything sent during (most of) the drain period was served.
    drained = traffic.codes(sent_after=signalled, sent_before=signalled + DRAIN * 0.75)
    assert set(drained) == {"OK"} and drained["OK"] >= 50, drained
    assert exited - signalled < EXIT_TIMEOUT
    assert "no longer accepting calls" in guard.log and "stopped after" in guard.log


def test_a_second_sigterm_stops_at_once(held_out):
    with ServeProcess(DEMO_REPOSITORY, "--drain-seconds", "60") as guard:
        with triton.InferenceServerClient(guard.grpc_url) as client:
            client.infer("digits", [infer_input(held_out[0][:1])])
        guard.signal(signal.SIGTERM)
        guard.wait_for_log("stopping gracefully")
        start = time.monotonic()
        guard.signal(signal.SIGTERM)
        assert guard.wait(timeout=15) == 0
        assert time.monotonic() - start < 10  # not the 60 s drain
        assert "SIGTERM again: stopping now" in guard.log


class HeldExecute:
    """A batcher's execute that holds each batch until released; records what ran."""

    def __init__(self):
        self.ran: list[list[int]] = []
        self.release = threading.Event()

    def __call__(self, payloads, deadline):
        self.ran.append(list(payloads))
        assert self.release.wait(10), "never released"
        return [p * 10 for p in payloads]


async def held_batcher(held: HeldExecute, **config) -> DynamicBatcher:
    settings = BatchingConfig(**{"max_batch_size": 1, "instances": 1, "inline_below_microseconds": 0, **config})
    batcher = DynamicBatcher(held, settings, executor=ThreadPoolExecutor(1))
    return batcher


async def until(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition never held"
        await asyncio.sleep(0.005)


async def test_close_runs_what_is_queued_instead_of_failing_it():
    """Closing with requests queued behind a running batch: all of them run and answer; a request
    that arrives after the close is refused."""
    held = HeldExecute()
    batcher = await held_batcher(held, max_queue_delay_microseconds=30_000_000)
    running = asyncio.ensure_future(batcher.submit(0, 1))
    await until(lambda: held.ran)
    queued = [asyncio.ensure_future(batcher.submit(i, 1)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(batcher.close(timeout=10))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull, match="shutting down"):
        await batcher.submit(9, 1)
    held.release.set()
    assert await asyncio.wait_for(closing, 10) is True
    assert await asyncio.gather(running, *queued) == [0, 10, 20, 30]
    assert held.ran == [[0], [1], [2], [3]]  # one at a time (max_batch_size 1), none waited for a window


async def test_what_still_waits_when_the_close_times_out_fails_unavailable():
    held = HeldExecute()
    batcher = await held_batcher(held)
    running = asyncio.ensure_future(batcher.submit(0, 1))
    await until(lambda: held.ran)
    queued = asyncio.ensure_future(batcher.submit(1, 1))
    await asyncio.sleep(0)
    assert await batcher.close(timeout=0.1) is False  # the held batch is still running
    for future in (running, queued):
        with pytest.raises(QueueFull, match="shutting down"):
            await future
    held.release.set()
    assert held.ran == [[0]]


def test_at_the_exit_timeout_waiting_requests_fail_unavailable_not_cancelled(tmp_path, gate, held_out):
    """One request held in a running batch and one queued behind it when the exit timeout (0.5 s)
    passes: both fail with UNAVAILABLE naming the shutdown, and the stop returns without waiting for
    the held batch."""
    answers: queue.Queue = queue.Queue()
    with running_gateway(gated_repository(tmp_path)) as srv, gate:
        with triton.InferenceServerClient(srv.grpc_url) as client:
            for tag in ("running", "queued"):
                client.async_infer(
                    "digits",
                    [infer_input(held_out[0][:1])],
                    lambda result, error, tag=tag: answers.put((tag, error)),
                    client_timeout=30,
                )
                if tag == "running":
                    assert gate.entered.wait(10)
            wait_until(lambda: queue_depth(srv) == 1, what="one request queued")
            start = time.monotonic()
            srv.call(srv.server.shutdown(drain_seconds=0, exit_timeout=0.5), 30)
            elapsed = time.monotonic() - start
            errors = dict(answers.get(timeout=10) for _ in range(2))
    assert elapsed < 0.5 + ABORT_GRACE + 2
    for tag, error in errors.items():
        assert error is not None and error.status() == "StatusCode.UNAVAILABLE", (tag, error)
        assert "shutting down" in error.message(), (tag, error.message())


def test_a_request_over_the_concurrency_limit_while_stopping_is_parked_then_unavailable(tmp_path, gate, held_out):
    """Limit 3, two places held (one running, one queued) when the stop begins. A new request takes
    the last place and is parked; one more is over the limit. Answered RESOURCE_EXHAUSTED at once,
    its client (1,100 of them, saturating a gateway) would send again at once, and gRPC cancels
    the calls it holds when it stops accepting: CANCELLED. So it is parked too, and answered
    UNAVAILABLE with the parked ones once gRPC no longer accepts calls."""
    data = pb.ModelInferRequest(model_name="digits")
    data.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
    data.raw_input_contents.append(np.ascontiguousarray(held_out[0][:1], np.float32).tobytes())
    with (
        running_gateway(gated_repository(tmp_path), max_concurrency=3) as srv,
        gate,
        grpc.insecure_channel(srv.grpc_url) as channel,
    ):
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        running = infer.future(data.SerializeToString(), timeout=30)
        assert gate.entered.wait(10)
        queued = infer.future(data.SerializeToString(), timeout=30)
        wait_until(lambda: queue_depth(srv) == 1, what="one request queued")
        stopping = asyncio.run_coroutine_threadsafe(srv.server.shutdown(drain_seconds=0, exit_timeout=20), srv._loop)
        wait_until(lambda: srv.server.dataplane.refusing, what="the stop to park new requests")
        parked = infer.future(data.SerializeToString(), timeout=30)
        over = infer.future(data.SerializeToString(), timeout=30)
        for call in (parked, over):
            error = call.exception(timeout=30)
            assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert "server is shutting down: send the request to another replica" in error.details()
        gate.open()
        stopping.result(30)
        for call in (running, queued):
            assert pb.ModelInferResponse.FromString(call.result()).model_name == "digits"


def test_server_and_model_ready_turn_false_when_the_drain_begins_while_requests_are_still_served(held_out):
    """Clients and probes that ask ServerReady / ModelReady rather than gRPC health must see the drain
    too, or they keep sending until the gateway stops accepting. A long drain, ended by `force`."""
    with running_gateway() as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        assert client.is_server_ready() and client.is_model_ready("digits")

        async def begin():
            force = asyncio.Event()
            stopping = asyncio.ensure_future(srv.server.shutdown(drain_seconds=600, exit_timeout=600, force=force))
            await asyncio.sleep(0)  # the shutdown has run to its first await: it is draining
            return force, stopping

        force, stopping = srv.call(begin(), 10)
        assert not client.is_server_ready()
        assert not client.is_model_ready("digits")
        result = client.infer("digits", [infer_input(held_out[0][:1])])
        assert result.get_response().model_name == "digits" and not stopping.done()

        async def end():
            force.set()
            await stopping

        srv.call(end(), 30)
