"""guard.tools.evaluation.client.GatewayClient against a live gateway: FP32 rows (`infer`) and encoded
images (`infer_encoded`, a camera's JPEG frames as BYTES), one per request, answered in order with
every detector's score and the verdict; each refuses a model whose input is the other kind."""

from __future__ import annotations

import numpy as np
import pytest

from guard.tools.evaluation.client import GatewayClient
from tests.conftest import running_gateway
from tests.serving.test_image_ingest import SIZE, encode, photo
from tests.serving.test_image_ingest import camera_repository as write_camera_repository


@pytest.fixture
def camera_repository(tmp_path):
    return write_camera_repository(tmp_path)


def test_infer_encoded_sends_each_image_alone_and_answers_in_order(camera_repository):
    items = [encode(photo(24 + 8 * i, 40 - 4 * i, i)) for i in range(5)]
    with running_gateway(camera_repository, policy="flag") as srv, GatewayClient(srv.grpc_url, window=2) as client:
        client.wait_ready(["cam"])
        served = client.infer_encoded("cam", items, "cam")
        alone = [client.infer_encoded("cam", [item]) for item in items[::-1]]
        empty = client.infer_encoded("cam", [])
        with pytest.raises(ValueError, match="infer_encoded"):
            client.infer("cam", np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert served.logits.shape == (5, 4) and served.verdicts.tolist() == ["clean"] * 5
    assert set(served.scores) == {"median_2x2"} and served.scores["median_2x2"].shape == (5,)
    for i, single in enumerate(alone[::-1]):  # row i is item i's answer
        np.testing.assert_allclose(single.logits[0], served.logits[i], rtol=1e-5, atol=1e-6)
        assert single.scores["median_2x2"][0] == pytest.approx(served.scores["median_2x2"][i], abs=1e-6)
    assert len({tuple(np.round(row, 4)) for row in served.logits}) == 5
    assert empty.logits.shape == (0, 0) and empty.scores == {} and len(empty.verdicts) == 0


def test_infer_still_sends_fp32_rows_and_refuses_encoded_images_for_a_tensor_model(gateway, held_out):
    x = held_out[0][:3]
    with GatewayClient(gateway.grpc_url) as client:
        served = client.infer("digits", x)
        with pytest.raises(ValueError, match="use infer"):
            client.infer_encoded("digits", [b"\xff\xd8"])
    assert served.logits.shape == (3, 10) and len(served.verdicts) == 3
    assert all(len(v) == 3 for v in served.scores.values()) and served.scores
