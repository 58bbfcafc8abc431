"""The gateway as its own upstream (guard in front of a pass-through guard): variants split to fit
the upstream's batch limit, forward_clean never shows the upstream a flagged input, and detectors
that need an output the upstream does not expose fail the load."""

import json
import time

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from benchmarks.peers.mlserver import free_port
from guard.protocol.errors import ConfigError
from tests.backends.remote.conftest import drop_detectors, infer, passthrough_repository, remote_repository, verdict_of
from tests.conftest import DEMO_REPOSITORY, running_gateway
from tests.serving.helpers import noise_rows

STAGE = "guard_stage_duration_seconds"


def scores_of(result) -> dict[str, float]:
    return json.loads(result.get_response().parameters["guard_detector_scores"].string_param)


def test_through_a_passthrough_guard_splits_to_its_max_batch(tmp_path, gateway, held_out):
    """16 rows + 2 squeezed copies = 48 rows, over the upstream's max_batch_size of 32: two calls."""
    x = held_out[0][:48]
    with running_gateway(passthrough_repository(tmp_path)) as upstream:
        repository = remote_repository(tmp_path, upstream.grpc_url, extra="max_batch = 32\n", edit=drop_detectors)
        with (
            running_gateway(repository) as front,
            triton.InferenceServerClient(front.grpc_url) as client,
            triton.InferenceServerClient(gateway.grpc_url) as local,
        ):
            for start in (0, 16, 32):
                rows = x[start : start + 16]
                ours = infer(client, rows, parameters={"guard_explain": True})
                theirs = infer(local, rows, parameters={"guard_explain": True})
                np.testing.assert_allclose(ours.as_numpy("logits"), theirs.as_numpy("logits"), atol=1e-5)
                for name, score in scores_of(ours).items():  # the squeezers, scored on upstream logits
                    assert score == pytest.approx(scores_of(theirs)[name], rel=1e-4, abs=1e-6)
        batches = upstream.server.metrics.registry.get_sample_value("guard_batch_size_count", {"model": "digits"})
        assert batches == 6


def test_forward_clean_never_shows_the_upstream_a_flagged_input(tmp_path, gateway, held_out):
    """The local INT8 copy runs every detector; clean requests get the FP32 upstream's outputs,
    flagged ones keep the local copy's (policy flag), and the upstream counts only clean rows."""
    # Clean digits and noise images (the latter far above every threshold, on any host): both
    # verdicts occur by construction, whatever this CPU's INT8 kernels make of the digits.
    x = np.concatenate([held_out[0][:30], noise_rows(3)])
    fp32 = ort.InferenceSession(str(DEMO_REPOSITORY / "digits_fp32" / "model.onnx"), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    with running_gateway(passthrough_repository(tmp_path, "digits_fp32")) as upstream:
        repository = remote_repository(tmp_path, upstream.grpc_url, mode="forward_clean", model="digits_fp32")
        with (
            running_gateway(repository) as front,
            triton.InferenceServerClient(front.grpc_url) as client,
            triton.InferenceServerClient(gateway.grpc_url) as local,
        ):
            clean = 0
            for row in x:
                row = row[np.newaxis]
                ours, theirs = infer(client, row), infer(local, row)
                assert verdict_of(ours)[:2] == verdict_of(theirs)[:2]
                if verdict_of(ours)[0] == "clean":
                    clean += 1
                    want = fp32.run(["logits"], {"input": row})[0]
                else:
                    want = theirs.as_numpy("logits")
                np.testing.assert_allclose(ours.as_numpy("logits"), want, atol=1e-5)
            # The front's time waiting on the upstream: one observation per forwarded batch, in
            # total no longer than the test has run.
            labels = {"model": "digits", "stage": "upstream"}
            waited = front.server.metrics.registry.get_sample_value(f"{STAGE}_sum", labels)
            forwards = front.server.metrics.registry.get_sample_value(f"{STAGE}_count", labels)
        rows = upstream.server.metrics.registry.get_sample_value("guard_batch_size_sum", {"model": "digits_fp32"})
        assert 0 < clean < len(x) and rows == clean
        assert 1 <= forwards <= clean and 0 < waited < time.perf_counter() - started


def test_feature_detectors_fail_the_load_when_the_upstream_hides_features(tmp_path):
    """A guard upstream never exposes features_output, so mahalanobis and the detector network
    cannot be served through it: the load fails naming them."""
    with running_gateway(passthrough_repository(tmp_path)) as upstream:
        repository = remote_repository(tmp_path, upstream.grpc_url)
        with pytest.raises(ConfigError) as info, running_gateway(repository):
            pass
    message = str(info.value)
    assert "key 'features_output'" in message and "mahalanobis" in message and "detector_net" in message


def test_forward_clean_with_the_upstream_down_still_blocks_flagged_requests(tmp_path, held_out):
    """Only the forwarded requests fail (UNAVAILABLE); flagged ones get their verdict (enforce:
    PERMISSION_DENIED), since they never needed the upstream."""
    repository = remote_repository(tmp_path, f"127.0.0.1:{free_port()}", mode="forward_clean")
    codes = set()
    with running_gateway(repository, policy="enforce") as front, triton.InferenceServerClient(front.grpc_url) as client:
        for row in np.concatenate([held_out[0][:10], noise_rows(3)]):
            with pytest.raises(InferenceServerException) as info:
                infer(client, row[np.newaxis], client_timeout=5)
            codes.add(info.value.status())
    assert codes == {"StatusCode.UNAVAILABLE", "StatusCode.PERMISSION_DENIED"}
