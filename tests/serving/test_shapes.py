"""Requests whose sizes differ on a variable (-1) dimension: a fully convolutional model with free
height and width, many concurrent clients sending interleaved sizes, every request served with
the model's own answer for it. A gate holds the first batch so the rest queue together: the next
batch certainly mixes sizes, which the runtime must run as one group per shape."""

from __future__ import annotations

import concurrent.futures
import queue
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper

from guard.serving.model_config import load_model_config
from tests.conftest import running_gateway
from tests.serving.helpers import GateDetector, infer_input, queue_depth, write_config

SIZES = [(8, 8), (12, 10), (16, 16), (9, 14)]


def fully_convolutional(path) -> None:
    """Conv 3x3 (pad 1) -> ReLU -> global average pool -> linear: logits [N, 3] for any H x W."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
        "fc": rng.normal(size=(4, 3)).astype(np.float32),
        "fb": rng.normal(size=3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["features"]),
        helper.make_node("Gemm", ["features", "fc", "fb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fcn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture
def repository(tmp_path):
    directory = tmp_path / "repository" / "fcn"
    directory.mkdir(parents=True)
    fully_convolutional(directory / "model.onnx")
    write_config(
        tmp_path / "repository",
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, -1, -1], "range": [0.0, 1.0], "layout": "NCHW"}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [3]}],
            "batching": {"max_batch_size": 64, "max_queue_size": 256},
            "detectors": [
                {"name": "gate", "type": GateDetector.kind, "bits": 4, "threshold": 1e9},
                {"name": "median_2x2", "type": "squeeze_median", "size": 2, "threshold": 1e9},
            ],
        },
        "fcn",
    )
    return tmp_path / "repository"


def test_the_config_keeps_height_and_width_free(repository, gate):
    assert load_model_config(repository / "fcn").inputs[0].shape == (1, -1, -1)


def test_interleaved_sizes_from_many_clients_each_get_their_own_answer(repository, gate):
    session = ort.InferenceSession(str(repository / "fcn" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    requests = [rng.random((1 + i % 3, 1, *SIZES[i % len(SIZES)]), dtype=np.float32) for i in range(24)]
    answers: queue.Queue = queue.Queue()

    def send(client, i):
        result = client.infer("fcn", [infer_input(requests[i], "x")], client_timeout=60)
        answers.put((i, result.as_numpy("logits"), result.get_response().parameters["guard_verdict"].string_param))

    with running_gateway(repository) as srv, gate, triton.InferenceServerClient(srv.grpc_url) as client:
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:  # a client thread each
            first = pool.submit(send, client, 0)
            assert gate.entered.wait(30)
            rest = [pool.submit(send, client, i) for i in range(1, len(requests))]
            start = time.monotonic()
            while queue_depth(srv, "fcn") < len(rest):  # every other request waits behind the gate
                assert time.monotonic() - start < 30, "requests never queued"
                time.sleep(0.005)
            gate.open()
            for future in [first, *rest]:
                future.result(timeout=60)
        batches = srv.server.metrics.registry.get_sample_value("guard_batch_size_count", {"model": "fcn"})
    assert batches == 2  # the held one, then everything else in one batch of mixed sizes
    got = {i: (logits, verdict) for i, logits, verdict in (answers.get() for _ in requests)}
    for i, x in enumerate(requests):
        logits, verdict = got[i]
        np.testing.assert_allclose(logits, session.run(["logits"], {"x": x})[0], rtol=1e-5, atol=1e-5)
        assert verdict == "clean"
