"""Batches cut to what the upstream's metadata allows: a variable batch dimension (optionally
capped by max_batch), a fixed one (the last call padded), or none (one row per call)."""

import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.backends.remote.conftest import drop_detectors, fake_upstream, infer, remote_repository
from tests.conftest import running_gateway

EVERY_DETECTOR = ("squeeze_bit_depth", "squeeze_median", "mahalanobis", "detector_network")


@pytest.mark.parametrize(
    "batch, max_batch, calls",
    [
        (-1, 0, [(7, 1, 16, 16)]),
        (-1, 5, [(5, 1, 16, 16), (2, 1, 16, 16)]),
        (4, 0, [(4, 1, 16, 16), (4, 1, 16, 16)]),
        (None, 0, [(1, 16, 16)] * 7),
    ],
)
def test_rows_reach_the_upstream_in_its_layout_and_come_back_in_order(tmp_path, held_out, batch, max_batch, calls):
    x = np.ascontiguousarray(held_out[0][:7])
    with fake_upstream(batch=batch) as (fake, target):
        repository = remote_repository(
            tmp_path, target, extra=f"max_batch = {max_batch}\n", edit=lambda text: drop_detectors(text, EVERY_DETECTOR)
        )
        with running_gateway(repository) as front, triton.InferenceServerClient(front.grpc_url) as client:
            logits = infer(client, x).as_numpy("logits")
    np.testing.assert_array_equal(logits, x.reshape(7, -1)[:, :10])
    assert sorted(fake.shapes) == sorted(calls)
