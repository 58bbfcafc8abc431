"""Queue admission and deadlines on a live gateway, through tritonclient: a full queue rejects with
UNAVAILABLE at once, a request whose deadline passes while it waits fails with DEADLINE_EXCEEDED
from the guard itself, and the earliest of the client's deadline, its `timeout` parameter
(microseconds) and the model's default timeout is the one that counts.

A gate detector holds the running batch, so queued requests stay queued for exactly as long as the
test wants: the assertions are about order and state, never about how fast this host is.
"""

from __future__ import annotations

import queue
import time

import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import running_gateway
from tests.serving.helpers import gated_repository, infer_input, queue_depth, requests_total

QUEUED_MESSAGE = "deadline passed while the request was queued"
SERVER_LIMIT_MESSAGE = "the server's queue timeout of 0.2 s for model 'digits'"
# Long enough that only the guard's own deadline can end a request first; a request that runs
# into it was failed by the client, which is what these tests must tell apart.
CLIENT_TIMEOUT = 10.0


def wait_until(condition, timeout: float = 10.0) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition never held"
        time.sleep(0.005)


class Calls:
    """Requests sent with tritonclient's async_infer; results by tag, in completion order."""

    def __init__(self, client: triton.InferenceServerClient, x):
        self.client, self.x = client, x
        self.done: queue.Queue = queue.Queue()

    def send(self, tag: str, **kwargs) -> None:
        self.client.async_infer(
            "digits", [infer_input(self.x)], partial(self.done.put, tag), client_timeout=CLIENT_TIMEOUT, **kwargs
        )

    def results(self, count: int) -> dict[str, tuple]:
        return dict(self.done.get(timeout=CLIENT_TIMEOUT + 5) for _ in range(count))


def partial(put, tag):
    return lambda result, error: put((tag, (result, error)))


def status(error) -> str:
    return error.status().removeprefix("StatusCode.") if error is not None else "OK"


def test_a_full_queue_rejects_at_once_with_unavailable(tmp_path, gate, held_out):
    repository = gated_repository(tmp_path, max_queue_size=2)
    with running_gateway(repository) as srv, gate, triton.InferenceServerClient(srv.grpc_url) as client:
        calls = Calls(client, held_out[0][:1])
        calls.send("running")
        assert gate.entered.wait(10)
        calls.send("queued-1")
        calls.send("queued-2")
        wait_until(lambda: queue_depth(srv) == 2)
        with pytest.raises(InferenceServerException) as info:
            client.infer("digits", [infer_input(held_out[0][:1])], client_timeout=CLIENT_TIMEOUT)
        assert status(info.value) == "UNAVAILABLE"
        assert "Exceeds maximum queue size (2 requests)" in info.value.message()
        assert not gate.released.is_set()  # rejected while the queue was still full
        gate.open()
        results = calls.results(3)
        assert {tag: status(error) for tag, (_, error) in results.items()} == dict.fromkeys(
            ("running", "queued-1", "queued-2"), "OK"
        )
        assert requests_total(srv, "UNAVAILABLE") == 1 and requests_total(srv, "OK") == 3


def test_timeout_parameter_is_microseconds_and_expires_the_request_in_the_queue(tmp_path, gate, held_out):
    """tritonclient's `timeout` (the v2 parameter, microseconds): 200 ms, far below the client's
    own 10 s deadline, so only the guard can end the request while the gate holds the batch."""
    with running_gateway(gated_repository(tmp_path)) as srv, gate, triton.InferenceServerClient(srv.grpc_url) as client:
        calls = Calls(client, held_out[0][:1])
        calls.send("running")
        assert gate.entered.wait(10)
        calls.send("expires", timeout=200_000)
        tag, (_, error) = calls.done.get(timeout=CLIENT_TIMEOUT + 5)
        assert tag == "expires" and not gate.released.is_set()
        assert status(error) == "DEADLINE_EXCEEDED" and QUEUED_MESSAGE in error.message()
        gate.open()
        assert status(calls.results(1)["running"][1]) == "OK"
        assert requests_total(srv, "DEADLINE_EXCEEDED") == 1


def test_model_default_timeout_applies_and_a_request_may_only_lower_it(tmp_path, gate, held_out):
    """default_timeout_microseconds = 200 ms: a request without `timeout` expires at it, and one
    asking for 60 s still expires at it (the earliest bound wins). Their clients set 10 s: the
    message names the server's limit, not a deadline they would take for their own."""
    repository = gated_repository(tmp_path, default_timeout_microseconds=200_000, max_batch_size=1)
    with running_gateway(repository) as srv, gate, triton.InferenceServerClient(srv.grpc_url) as client:
        calls = Calls(client, held_out[0][:1])
        calls.send("running")
        assert gate.entered.wait(10)
        calls.send("default")
        calls.send("asks-for-more", timeout=60_000_000)
        results = calls.results(2)
        assert not gate.released.is_set()
        for tag in ("default", "asks-for-more"):
            error = results[tag][1]
            assert status(error) == "DEADLINE_EXCEEDED", tag
            assert SERVER_LIMIT_MESSAGE in error.message() and "client's deadline)" in error.message(), error
        gate.open()
        assert status(calls.results(1)["running"][1]) == "OK"


def test_expired_requests_never_run(tmp_path, gate, held_out):
    """A request that expired in the queue is not run once the batch ahead of it finishes: the
    backend sees the running request's row and the one sent after, nothing else."""
    with running_gateway(gated_repository(tmp_path)) as srv, gate, triton.InferenceServerClient(srv.grpc_url) as client:
        calls = Calls(client, held_out[0][:1])
        calls.send("running")
        assert gate.entered.wait(10)
        calls.send("expires", timeout=100_000)
        error = calls.results(1)["expires"][1]
        # The client's own `timeout` (0.1 s) came first: the message is about its deadline.
        assert error.message().endswith(QUEUED_MESSAGE) and "server's" not in error.message(), error
        gate.open()
        assert status(calls.results(1)["running"][1]) == "OK"
        client.infer("digits", [infer_input(held_out[0][:1])], client_timeout=CLIENT_TIMEOUT)
        batches = srv.server.metrics.registry.get_sample_value("guard_batch_size_sum", {"model": "digits"})
        assert batches == 2
