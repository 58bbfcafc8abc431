"""A scrape of /metrics after traffic carries the contracted names and labels."""

import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.conftest import demo_detector_names, running_gateway


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


def test_metrics_after_traffic(held_out):
    with running_gateway() as srv:
        with triton.InferenceServerClient(srv.grpc_url) as client:
            for i in range(30):
                tensor = triton.InferInput("input", [2, 1, 16, 16], "FP32")
                tensor.set_data_from_numpy(held_out[0][2 * i : 2 * i + 2])
                client.infer("digits", [tensor])
            bad = triton.InferInput("input", [1, 1, 16, 16], "FP32")
            bad.set_data_from_numpy(np.full((1, 1, 16, 16), 7.0, np.float32))
            with pytest.raises(InferenceServerException):
                client.infer("digits", [bad])
        families = scrape(srv.metrics_url)

    def samples(name, suffix=""):
        return [s for s in families[name].samples if s.name == name + suffix and s.labels.get("model") == "digits"]

    requests = {(s.labels["verdict"], s.labels["code"]): s.value for s in samples("guard_requests", "_total")}
    assert sum(v for (verdict, code), v in requests.items() if code == "OK") == 30
    assert requests[("none", "INVALID_ARGUMENT")] == 1
    assert samples("guard_request_duration_seconds", "_count")[0].value == 31
    stages = {s.labels["stage"] for s in samples("guard_stage_duration_seconds", "_count")}
    assert stages >= {"queue", "squeeze", "backend", "detect"}
    batch_rows = samples("guard_batch_size", "_sum")[0].value
    assert batch_rows == 60  # every original row went through a batch exactly once
    detectors = {s.labels["detector"] for s in samples("guard_detector_score", "_count")}
    assert detectors == set(demo_detector_names())
    assert all(s.value == 30 for s in samples("guard_detector_score", "_count"))
    assert samples("guard_queue_depth")[0].labels == {"model": "digits"}
    assert "guard_flagged" in families
    rows = samples("guard_backend_rows", "_total")[0].value
    assert rows == 60 * 3  # originals plus two squeezed copies each, in the same calls
