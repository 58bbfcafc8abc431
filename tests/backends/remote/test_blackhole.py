"""The circuit breaker against an upstream that stops answering: a `guard serve` upstream frozen
with SIGSTOP (its port still accepts connections, nothing answers: a blackhole), thawed with
SIGCONT, then killed (connections refused).

What is asserted is state, not speed: once the breaker is open, requests fail with UNAVAILABLE
saying so ("circuit open") instead of each going out and waiting for the upstream's timeout; the
breaker closes again when the upstream answers.
"""

from __future__ import annotations

import signal

import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.backends.remote.conftest import drop_detectors, infer, passthrough_repository, remote_repository
from tests.backends.remote.test_faults import wait_for
from tests.conftest import running_gateway
from tests.serving.process import ServeProcess

CIRCUIT = (
    "timeout_s = 0.5\ncircuit_failures = 2\n"
    "circuit_reset_s = 60.0\n"  # longer than the test: only the health watcher closes it
    "health_interval_s = 0.2\n"
)


def outcome(client, x) -> tuple[str, str]:
    try:
        infer(client, x, client_timeout=10)
    except InferenceServerException as exc:
        return exc.status().removeprefix("StatusCode."), exc.message()
    return "OK", ""


def until_circuit_opens(client, x, limit: int = 6) -> list[tuple[str, str]]:
    """Requests one after another until one fails with the circuit open (at most `limit`)."""
    seen = []
    while len(seen) < limit:
        seen.append(outcome(client, x))
        if "circuit open" in seen[-1][1]:
            return seen
    pytest.fail(f"the circuit never opened: {seen}")


def test_a_silent_then_dead_upstream_opens_the_circuit_and_recovery_closes_it(tmp_path, held_out):
    x = held_out[0][:1]
    with ServeProcess(passthrough_repository(tmp_path)) as upstream:
        repository = remote_repository(tmp_path, upstream.grpc_url, extra=CIRCUIT, edit=drop_detectors)
        with running_gateway(repository) as front, triton.InferenceServerClient(front.grpc_url) as client:
            assert outcome(client, x) == ("OK", "")

            upstream.signal(signal.SIGSTOP)  # accepts connections, answers nothing
            try:
                before = until_circuit_opens(client, x)
                # Until it opened, calls went out and ran into the upstream's 0.5 s limit.
                assert all(
                    code == "DEADLINE_EXCEEDED" and "did not answer within 500 ms" in message
                    for code, message in before[:-1]
                ), before
                assert len(before) <= 3  # circuit_failures = 2, or sooner when the watcher trips it
                for _ in range(5):
                    code, message = outcome(client, x)
                    assert code == "UNAVAILABLE" and "circuit open" in message, message
                assert not client.is_model_ready("digits")
            finally:
                upstream.signal(signal.SIGCONT)

            wait_for(lambda: client.is_model_ready("digits"), timeout=10)
            assert outcome(client, x) == ("OK", "")

            upstream.kill()  # connections refused from now on
            refused = until_circuit_opens(client, x)
            assert all(code == "UNAVAILABLE" for code, _ in refused), refused
            assert "upstream model 'digits'" in refused[-1][1]
