"""Server-side failures on a live gateway: a detector that fails while building its variants or
while scoring fails the request closed (INTERNAL) unless the model opts into fail_open, a model
that cannot run an input fails it with UNAVAILABLE, and in every case the gateway keeps serving.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from guard.detection import detectors
from guard.detection.detectors.squeezing import BitDepthDetector
from tests.conftest import copy_demo, running_gateway
from tests.serving.helpers import edit_config, infer_input, thresholds_as_written, verdict


class FailsInVariants(BitDepthDetector):
    kind = "fails_in_variants"

    def variants(self, x):
        raise RuntimeError("cannot squeeze this batch")


@pytest.fixture
def failing_variants(monkeypatch):
    monkeypatch.setitem(detectors.REGISTRY, FailsInVariants.kind, FailsInVariants)


def with_failing_detector(tmp_path, fail_open: bool):
    def change(table):
        table["detectors"][0]["type"] = FailsInVariants.kind
        table["fail_open"] = fail_open
        thresholds_as_written(table)  # the detector fails on purpose, at load too if it recalibrated

    return edit_config(copy_demo(tmp_path), change)


def test_a_detector_failing_in_variants_fails_closed_and_the_server_keeps_serving(tmp_path, failing_variants, held_out):
    repository = with_failing_detector(tmp_path, fail_open=False)
    with running_gateway(repository) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        for _ in range(2):  # the same answer twice: nothing broke for good
            with pytest.raises(InferenceServerException) as info:
                client.infer("digits", [infer_input(held_out[0][:1])])
            assert info.value.status() == "StatusCode.INTERNAL"
            assert "building detector variants failed: cannot squeeze this batch" in info.value.message()
        assert client.is_server_live()
        # The other model of the repository still serves.
        assert client.infer("digits_fp32", [infer_input(held_out[0][:1])]).as_numpy("logits").shape == (1, 10)


def test_a_detector_failing_in_variants_is_served_unchecked_under_fail_open(
    tmp_path, failing_variants, held_out, caplog
):
    repository = with_failing_detector(tmp_path, fail_open=True)
    with (
        caplog.at_level(logging.WARNING, logger="guard.serving"),
        running_gateway(repository) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        result = client.infer("digits", [infer_input(held_out[0][:2])])
    assert verdict(result) == ("unchecked", "", 0.0)
    assert result.as_numpy("logits").shape == (2, 10)
    # An operator filtering on the serving logger sees which model runs unchecked, and why.
    served_unchecked = [
        r
        for r in caplog.records
        if r.name == "guard.serving" and r.levelno == logging.WARNING and "serving unchecked" in r.getMessage()
    ]
    assert [r.getMessage().split(": DetectorError")[0] for r in served_unchecked] == [
        "digits: detectors failed; serving unchecked (fail_open)"
    ]
    assert "cannot squeeze this batch" in served_unchecked[0].getMessage()


def length_four_model(path) -> None:
    """A model that runs rows whose length is a multiple of 4 only: y = sum of Reshape(x, [N, -1, 4])."""

    def constant(name, values):
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
        )

    nodes = [
        constant("shape", [0, -1, 4]),
        constant("axes", [1, 2]),
        helper.make_node("Reshape", ["x", "shape"], ["quads"]),
        helper.make_node("ReduceSum", ["quads", "axes"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "quads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_a_model_that_cannot_run_an_input_fails_it_with_unavailable(tmp_path):
    directory = tmp_path / "repository" / "quads"
    directory.mkdir(parents=True)
    length_four_model(directory / "model.onnx")
    (directory / "config.toml").write_text(
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1]\n\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = []\n'
    )
    with running_gateway(tmp_path / "repository") as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer("quads", [infer_input(np.ones((1, 6), np.float32), "x")])
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "model execution failed" in info.value.message()
        served = client.infer("quads", [infer_input(np.ones((2, 8), np.float32), "x")])
        assert served.as_numpy("y").tolist() == [8.0, 8.0]
