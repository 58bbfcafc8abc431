"""Triton's model configuration and statistics extensions, asked through tritonclient as
perf_analyzer asks them: the configuration is config.toml's client contract, and the statistics
count what the gateway did, request by request and batch by batch."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.serving.model_config import load_model_config
from tests.conftest import DEMO_REPOSITORY, copy_demo, running_gateway
from tests.serving.helpers import edit_config
from tests.serving.test_image_ingest import camera_repository, encode


@pytest.fixture(scope="module")
def client():
    with running_gateway() as server, triton.InferenceServerClient(server.grpc_url) as c:
        yield c


def rows(n: int, seed: int = 0) -> triton.InferInput:
    x = np.random.default_rng(seed).uniform(0, 1, (n, 1, 16, 16)).astype(np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def stats(client: triton.InferenceServerClient, model: str = "digits") -> dict:
    (entry,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return entry


def count(entry: dict, *path: str) -> int:
    for key in path:
        entry = entry.get(key, {})
    return int(entry or 0)  # proto3 JSON leaves zeros out


def test_the_configuration_is_the_client_contract(client):
    config = client.get_model_config("digits", as_json=True)["config"]
    served = load_model_config(DEMO_REPOSITORY / "digits")
    assert (config["name"], config["platform"], config["backend"]) == ("digits", served.platform, "onnxruntime")
    assert config["max_batch_size"] == served.batching.max_batch_size
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": ["1", "16", "16"]}
    ]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["10"]}]
    assert config["instance_group"] == [{"name": "digits", "count": 1, "kind": "KIND_CPU"}]
    assert "dynamic_batching" in config
    # Only the contract: nothing of the detectors or their thresholds.
    assert "threshold" not in str(config) and "mahalanobis" not in str(config)
    extensions = client.get_server_metadata(as_json=True)["extensions"]
    assert {"model_configuration", "statistics"} <= set(extensions)  # perf_analyzer reads these


def test_an_encoded_image_input_is_a_string_tensor(tmp_path):
    repository = camera_repository(tmp_path, batching={"max_batch_size": 4, "max_queue_delay_microseconds": 250})
    with running_gateway(repository) as server, triton.InferenceServerClient(server.grpc_url) as c:
        config = c.get_model_config("cam", as_json=True)["config"]
    assert config["input"] == [{"name": "image", "data_type": "TYPE_STRING"}]  # shape [] per row: no dims
    assert config["max_batch_size"] == 4
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": "250"}


def test_unknown_models_and_bad_names_are_named(client):
    for call in (client.get_model_config, client.get_inference_statistics):
        with pytest.raises(InferenceServerException) as missing:
            call("nope")
        assert missing.value.status() == "StatusCode.NOT_FOUND" and "nope" in missing.value.message()
        with pytest.raises(InferenceServerException) as bad:
            call("digits\n")
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT" and "control characters" in bad.value.message()
        with pytest.raises(InferenceServerException) as version:
            call("digits", "7")
        assert version.value.status() == "StatusCode.NOT_FOUND" and "'7'" in version.value.message()


def test_statistics_count_requests_rows_batches_and_failures(client):
    before = stats(client)
    started_ms = time.time() * 1000
    for n in (1, 2, 3):
        client.infer("digits", [rows(n)])
    with pytest.raises(InferenceServerException):
        client.infer("digits", [rows(2)], outputs=[triton.InferRequestedOutput("nope")])
    after = stats(client)
    grew = {
        path: count(after, *path) - count(before, *path)
        for path in [
            ("inference_count",),
            ("execution_count",),
            ("inference_stats", "success", "count"),
            ("inference_stats", "fail", "count"),
            ("inference_stats", "queue", "count"),
            ("inference_stats", "compute_infer", "count"),
        ]
    }
    # Sent one at a time: each request is its own batch.
    assert grew == {
        ("inference_count",): 6,
        ("execution_count",): 3,
        ("inference_stats", "success", "count"): 3,
        ("inference_stats", "fail", "count"): 1,
        ("inference_stats", "queue", "count"): 3,
        ("inference_stats", "compute_infer", "count"): 3,
    }
    stages = ("compute_input", "compute_infer", "compute_output")
    assert len({count(after, "inference_stats", s, "count") for s in stages}) == 1  # perf_analyzer requires it
    for stage in ("success", *stages):
        assert count(after, "inference_stats", stage, "ns") > count(before, "inference_stats", stage, "ns")
    # A request's time in the gateway covers its batch's compute.
    success_ns = count(after, "inference_stats", "success", "ns") - count(before, "inference_stats", "success", "ns")
    compute_ns = sum(
        count(after, "inference_stats", s, "ns") - count(before, "inference_stats", s, "ns") for s in stages
    )
    assert success_ns >= compute_ns
    assert started_ms <= count(after, "last_inference") <= time.time() * 1000
    sizes = {int(b["batch_size"]) for b in after["batch_stats"]}
    assert {1, 2, 3} <= sizes


def test_requests_in_one_batch_each_count_the_batch_compute(tmp_path):
    """Six requests that wait for one another (a 300 ms batching window) run as one batch: one
    execution, while each request counts the batch's compute time, as Triton counts it."""
    batching = {"max_batch_size": 8, "max_queue_delay_microseconds": 300_000, "max_queue_size": 64}
    repository = edit_config(copy_demo(tmp_path), lambda t: t.__setitem__("batching", batching))
    done: list[object] = []
    with running_gateway(repository) as server, triton.InferenceServerClient(server.grpc_url) as c:
        for seed in range(6):
            c.async_infer("digits", [rows(1, seed=seed)], callback=lambda result, error: done.append(error))
        deadline = time.time() + 30
        while len(done) < 6 and time.time() < deadline:
            time.sleep(0.01)
        entry = stats(c)
    assert done == [None] * 6
    assert count(entry, "execution_count") == 1 and count(entry, "inference_count") == 6
    (batch,) = entry["batch_stats"]
    assert batch["batch_size"] == "6" and count(batch, "compute_infer", "count") == 1
    assert count(entry, "inference_stats", "compute_infer", "count") == 6
    assert count(entry, "inference_stats", "compute_infer", "ns") == 6 * count(batch, "compute_infer", "ns")


def test_every_model_when_the_name_is_empty(client):
    names = [entry["name"] for entry in client.get_inference_statistics(as_json=True)["model_stats"]]
    assert names == sorted(p.name for p in DEMO_REPOSITORY.iterdir() if (p / "config.toml").exists())


def test_an_image_model_counts_its_requests(tmp_path):
    repository = camera_repository(tmp_path)
    image = encode(np.full((20, 20, 3), 128, np.uint8))
    with running_gateway(repository) as server, triton.InferenceServerClient(server.grpc_url) as c:
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=object))
        c.infer("cam", [tensor])
        entry = stats(c, "cam")
    assert count(entry, "inference_count") == 1 and count(entry, "inference_stats", "success", "count") == 1
