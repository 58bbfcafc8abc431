"""What the gateway counts and logs must be true and safe, whatever a client sends.

- A request the client cancels, or whose gRPC deadline passes while it runs, is counted as
  CANCELLED or DEADLINE_EXCEEDED in guard_requests_total, not as OK (asyncio.CancelledError is no
  Exception, so a plain `except Exception` never sees it).
- Request ids and model names in log lines are escaped and capped: a CR/LF cannot forge a line, a
  1 MB id cannot flood the log. Ids that do not look like ids are logged as a digest
  (tests/security/test_logged_request_ids.py), model names escaped.
- A failure that repeats logs one traceback, then a count, not a traceback per request.
- A damaged detector artifact fails the load with a ConfigError naming the config key and the file.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc._cython import cygrpc
from tritonclient.utils import InferenceServerException

from guard.protocol.errors import ConfigError, DeadlineExceeded
from guard.serving import dataplane
from guard.serving.logs import MAX_LOGGED_CHARS, loggable_id
from guard.serving.transport.admission import Admission
from guard.serving.transport.faults import FaultLog
from guard.serving.transport.status import reports_errors
from tests.conftest import copy_demo, demo_detector_names, running_gateway
from tests.serving.helpers import gated_repository, infer_input, noise_rows, requests_total
from tests.serving.process import wait_until

FORGED = "\r\n2030-01-01 00:00:00,000 INFO guard.access: model=digits id=forged verdict=clean code=OK ms=0.1"


def test_a_request_the_client_cancels_is_counted_cancelled(tmp_path, gate, held_out):
    with running_gateway(gated_repository(tmp_path)) as srv, gate, triton.InferenceServerClient(srv.grpc_url) as client:
        answers: queue.Queue = queue.Queue()
        call = client.async_infer(
            "digits", [infer_input(held_out[0][:1])], lambda result, error: answers.put(error), client_timeout=30
        )
        assert gate.entered.wait(10)
        call.cancel()
        answers.get(timeout=10)
        wait_until(lambda: requests_total(srv, "CANCELLED") == 1, what="the cancelled request counted")
        gate.open()
        client.infer("digits", [infer_input(held_out[0][:1])])  # the server carries on
        assert requests_total(srv, "CANCELLED") == 1 and requests_total(srv, "OK") == 1


def test_a_request_whose_grpc_deadline_passes_while_it_runs_is_counted_deadline_exceeded(tmp_path, gate, held_out):
    """Its batch is running (held), so only gRPC's deadline can end it: the handler is cancelled."""
    with running_gateway(gated_repository(tmp_path)) as srv, gate, triton.InferenceServerClient(srv.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer("digits", [infer_input(held_out[0][:1])], client_timeout=0.3)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        wait_until(lambda: requests_total(srv, "DEADLINE_EXCEEDED") == 1, what="the expiry counted")
        gate.open()
        assert requests_total(srv, "OK") == 0 and requests_total(srv, "CANCELLED") == 0


def test_a_request_whose_deadline_passed_before_its_answer_logs_no_error(monkeypatch, caplog, held_out):
    """The event loop is held past the client's deadline while the request is read, so gRPC's core
    has ended the call when the gateway answers DEADLINE_EXCEEDED: the answer cannot be sent, and
    that is the client's deadline, not a server fault: counted, no ERROR, no traceback."""
    real = dataplane.validate

    def slow(*args):
        time.sleep(0.3)  # on the event loop: nothing else runs, the deadline passes in gRPC's core
        return real(*args)

    monkeypatch.setattr(dataplane, "validate", slow)
    caplog.set_level(logging.DEBUG)
    with running_gateway() as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        for i in range(3):
            with pytest.raises(InferenceServerException) as info:
                client.infer("digits", [infer_input(held_out[0][:1])], client_timeout=0.05)
            assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            # The next request only once this one is answered: sent while the loop is held, it
            # would expire before its handler even started.
            wait_until(lambda n=i + 1: requests_total(srv, "DEADLINE_EXCEEDED") == n, what="the expiry counted")
        assert requests_total(srv, "CANCELLED") == 0 and requests_total(srv, "INTERNAL") == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


async def test_a_status_that_cannot_be_sent_any_more_ends_the_call_as_cancelled(caplog):
    """When gRPC's core has ended the call before the answer (the client's deadline passed while
    the request waited), sending the status fails with gRPC's ExecuteBatchError, which gRPC logs as
    an ERROR with a traceback unless the handler ends cancelled: so it does, the failure counted
    as what it was."""

    class Ended:
        async def abort(self, code, details, metadata=()):
            raise cygrpc.ExecuteBatchError('Failed "execute_batch"')  # what gRPC raises for an ended call

    class Servicer:
        admission = Admission(4)
        faults = FaultLog(logging.getLogger("guard.serving.transport"))

        @reports_errors
        async def ModelInfer(self, request, context):
            raise DeadlineExceeded("deadline passed before the request was queued")

    servicer = Servicer()
    caplog.set_level(logging.INFO)
    with pytest.raises(asyncio.CancelledError):
        await servicer.ModelInfer(None, Ended())
    assert servicer.faults.totals == {"DEADLINE_EXCEEDED": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def messages(caplog, *loggers: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name in loggers]


def test_client_strings_in_log_lines_are_escaped_and_capped(caplog, held_out):
    caplog.set_level(logging.INFO, logger="guard.access")
    caplog.set_level(logging.INFO, logger="guard.serving.dataplane")
    huge = "A" * 1_000_000
    with running_gateway() as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        # Noise is flagged by the demo's detectors: its line in the flagged-request log too.
        client.infer("digits", [infer_input(noise_rows(1))], request_id="flag-me" + FORGED)
        client.infer("digits", [infer_input(held_out[0][:1])], request_id=huge)
        with pytest.raises(InferenceServerException):
            client.infer("nope" + FORGED, [infer_input(held_out[0][:1])], request_id="unknown-model")
    access = messages(caplog, "guard.access")
    flagged = [m for m in messages(caplog, "guard.serving.dataplane") if m.startswith("flagged ")]
    assert len(flagged) == 1
    every = [record.getMessage() for record in caplog.records]
    for line in every:  # the unknown model's name too, wherever it is logged
        assert "\r" not in line and "\n" not in line, line
        assert len(line) < 3 * MAX_LOGGED_CHARS + 200, len(line)
    forged_id = loggable_id("flag-me" + FORGED)
    assert forged_id.startswith("sha256:") and f"id={forged_id} " in flagged[0]
    assert any(f"id={forged_id} " in line and " code=OK " in line for line in access)
    assert any(f"id={loggable_id(huge)} " in line for line in access)


def test_an_unexpected_failure_logs_one_traceback_then_a_count(caplog, held_out):
    """Every batch raises a RuntimeError (a bug): each request fails INTERNAL, and the log holds one
    traceback for all of them, not one per request."""
    caplog.set_level(logging.INFO)
    with running_gateway() as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        runtime = srv.server._runtimes["digits"]

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        runtime.pipeline.run = broken
        for _ in range(10):
            with pytest.raises(InferenceServerException) as info:
                client.infer("digits", [infer_input(held_out[0][:1])])
            assert info.value.status() == "StatusCode.INTERNAL" and "boom" in info.value.message()
        assert requests_total(srv, "INTERNAL") == 10
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    assert "RuntimeError: boom" in tracebacks[0].getMessage()


def test_failures_in_the_last_seconds_before_a_stop_reach_the_log(caplog, held_out):
    """Failures are summarised once per interval (10 s); a stop before the next summary writes it:
    the transport's counts, the data plane's count of unexpected errors and the batcher's of failed
    batches all reach the log."""
    caplog.set_level(logging.INFO)
    with running_gateway() as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        runtime = srv.server._runtimes["digits"]

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        runtime.pipeline.run = broken
        for _ in range(5):
            with pytest.raises(InferenceServerException):
                client.infer("digits", [infer_input(held_out[0][:1])])
        assert not [m for m in messages(caplog, "guard.serving.transport") if "requests failed" in m]
    summaries = [m for m in messages(caplog, "guard.serving.transport") if "requests failed" in m]
    assert len(summaries) == 1 and "5 INTERNAL (ModelInfer 5;" in summaries[0], summaries
    unexpected = messages(caplog, "guard.serving.dataplane")
    assert any("4 more since the last report" in m and "RuntimeError: boom" in m for m in unexpected), unexpected
    batches = messages(caplog, "guard.serving.batching")
    assert any("4 more failed batches since the last report" in m for m in batches), batches


def damage(repository, file: str, how: str) -> None:
    path = repository / "digits" / file
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:  # an .npz without one of the arrays the detector reads
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays.pop(how)
        np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("file", "how", "detector", "key"),
    [
        ("mahalanobis.npz", "truncate", "mahalanobis", "statistics"),
        ("mahalanobis.npz", "means", "mahalanobis", "statistics"),
        ("detector_net.npz", "truncate", "detector_net", "weights"),
        ("detector_net.npz", "w2", "detector_net", "weights"),
    ],
)
def test_a_damaged_detector_artifact_fails_the_load_naming_the_key_and_file(tmp_path, file, how, detector, key):
    repository = copy_demo(tmp_path)
    damage(repository, file, how)
    index = demo_detector_names().index(detector)
    with pytest.raises(ConfigError) as info, running_gateway(repository):
        pass
    assert info.value.key == f"detectors[{index}].{key}"
    assert str(repository / "digits" / file) in info.value.message


def test_a_damaged_ensemble_file_fails_the_load_naming_its_key(tmp_path):
    repository = copy_demo(tmp_path)
    damage(repository, "ensemble.npz", "truncate")
    with pytest.raises(ConfigError) as info, running_gateway(repository):
        pass
    assert info.value.key == "ensemble.references" and "ensemble.npz" in info.value.message
