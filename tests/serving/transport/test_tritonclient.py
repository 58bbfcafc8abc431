"""tritonclient.grpc, unchanged, against a live gateway serving the shipped demo model."""

import queue

import numpy as np
import pytest
import tritonclient.grpc as triton
from scipy.stats import binom
from tritonclient.utils import InferenceServerException

BATCH = 16


@pytest.fixture(scope="module")
def client(gateway):
    with triton.InferenceServerClient(gateway.grpc_url) as c:
        yield c


def infer_input(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return tensor


def test_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "guard"
    meta = client.get_model_metadata("digits", as_json=True)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "16", "16"]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]


def test_held_out_split_through_the_gateway(client, held_out):
    """Accuracy >= 97% with the three verdict parameters on every response, and the clean flag
    rate held at the calibrated target."""
    x, y = held_out
    predictions, flagged = [], 0
    for start in range(0, len(x), BATCH):
        chunk = x[start : start + BATCH]
        result = client.infer("digits", [infer_input(chunk)], outputs=[triton.InferRequestedOutput("logits")])
        logits = result.as_numpy("logits")
        assert logits.shape == (len(chunk), 10) and logits.dtype == np.float32
        predictions.append(logits.argmax(1))
        params = result.get_response().parameters
        assert set(params) >= {"guard_verdict", "guard_score", "guard_flagged_by"}
        assert params["guard_verdict"].string_param in ("clean", "adversarial", "trigger")
        assert (params["guard_score"].double_param >= 1.0) == bool(params["guard_flagged_by"].string_param)
    # Per-sample flag rate: one request per sample for the rate (a batch carries one verdict).
    for i in range(len(x)):
        params = client.infer("digits", [infer_input(x[i : i + 1])]).get_response().parameters
        flagged += params["guard_verdict"].string_param != "clean"
    accuracy = float((np.concatenate(predictions) == y).mean())
    assert accuracy >= 0.97
    # The thresholds hold the clean flag rate at most 5% with 90% confidence on the host that serves
    # (re-derived at load where its runtime differs from the calibration's). Even at exactly 5%, more
    # flags than this would come once in a million runs of 360 samples.
    assert flagged <= binom.isf(1e-6, len(x), 0.05), f"{flagged} of {len(x)} clean test samples flagged"


def test_outputs_match_in_process_onnxruntime(client, held_out):
    import onnxruntime as ort

    from tests.conftest import DEMO_REPOSITORY

    x = held_out[0][:8]
    session = ort.InferenceSession(str(DEMO_REPOSITORY / "digits" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"input": x})[0]
    got = client.infer("digits", [infer_input(x)]).as_numpy("logits")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_request_id_is_echoed(client, held_out):
    result = client.infer("digits", [infer_input(held_out[0][:1])], request_id="req-42")
    assert result.get_response().id == "req-42"


def test_streaming_returns_every_request_and_keeps_errors_per_request(client, held_out):
    x = held_out[0]
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(20):
            client.async_stream_infer("digits", [infer_input(x[i : i + 1])], request_id=str(i))
        bad = triton.InferInput("input", [1, 1, 8, 8], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
        client.async_stream_infer("digits", [bad], request_id="bad")
        client.async_stream_infer("digits", [infer_input(x[20:21])], request_id="after-bad")
        results = [answers.get(timeout=30) for _ in range(22)]
    finally:
        client.stop_stream()
    errors = [e for _, e in results if e is not None]
    ok = {r.get_response().id: r for r, e in results if e is None}
    assert len(errors) == 1 and "expected shape [N, 1, 16, 16]" in str(errors[0])
    assert set(ok) == {str(i) for i in range(20)} | {"after-bad"}
    for i in range(20):
        response = ok[str(i)]
        assert "guard_verdict" in response.get_response().parameters
        assert response.as_numpy("logits").shape == (1, 10)


def test_unknown_model_is_not_found(client, held_out):
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [infer_input(held_out[0][:1])])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in info.value.message()


def test_explain_parameter_returns_every_detector_score(client, held_out):
    import json

    result = client.infer("digits", [infer_input(held_out[0][:1])], parameters={"guard_explain": True})
    params = result.get_response().parameters
    scores = json.loads(params["guard_detector_scores"].string_param)
    from tests.conftest import demo_detector_names

    assert set(scores) == set(demo_detector_names())
    plain = client.infer("digits", [infer_input(held_out[0][:1])]).get_response().parameters
    assert "guard_detector_scores" not in plain
