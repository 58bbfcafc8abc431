"""Policies enforce / flag / shadow, and fail-closed vs fail-open, on live gateways."""

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.detection import detectors
from guard.detection.detectors.squeezing import BitDepthDetector
from tests.conftest import copy_demo, demo_detector_names, running_gateway, set_key
from tests.serving.helpers import noise_rows

# With thresholds this small every input is flagged, which makes the policy visible.
HAIR_TRIGGER = 1e-9


def hair_trigger(text: str) -> str:
    """Every threshold so low that any row flags, served as written (see trusted)."""
    import re

    return trusted(re.sub(r"^threshold = .*$", f"threshold = {HAIR_TRIGGER}", text, flags=re.M))


def trusted(text: str) -> str:
    """Calibration mode trust (tests.serving.helpers.thresholds_as_written, on the config's text)."""
    return set_key(text, "mode", '"trust"')


def infer(url, x, **kwargs):
    with triton.InferenceServerClient(url) as client:
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("digits", [tensor], **kwargs)


@pytest.fixture(scope="module")
def flagging_repository(tmp_path_factory):
    return copy_demo(tmp_path_factory.mktemp("policy"), hair_trigger)


def test_enforce_blocks_flagged_requests_with_detector_and_score(flagging_repository, held_out):
    with running_gateway(flagging_repository, policy="enforce") as srv:
        with pytest.raises(InferenceServerException) as info:
            infer(srv.grpc_url, held_out[0][:1])
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    message = info.value.message()
    assert "verdict adversarial" in message and "score" in message
    # Every detector fires at a hair trigger; the message names them all, in the config's order.
    assert f"flagged by {', '.join(demo_detector_names())}, score" in message, message


def test_enforce_serves_clean_requests_with_verdict(held_out):
    """Every answer is either served clean (score below 1, nobody fired) or blocked; noise images
    are always blocked. Digits are mostly served, but which ones depends on this host's kernels:
    how many is the flag-rate tests' business (tests/serving/transport/test_tritonclient.py)."""
    x = np.concatenate([held_out[0][:20], noise_rows(3)])
    with running_gateway(policy="enforce") as srv:
        outcomes = []
        for i in range(len(x)):
            try:
                result = infer(srv.grpc_url, x[i : i + 1])
            except InferenceServerException as exc:
                assert exc.status() == "StatusCode.PERMISSION_DENIED"
                outcomes.append("blocked")
                continue
            outcomes.append("served")
            params = result.get_response().parameters
            assert params["guard_verdict"].string_param == "clean"
            assert params["guard_flagged_by"].string_param == ""
            assert params["guard_score"].double_param < 1.0
    assert outcomes[-3:] == ["blocked"] * 3
    assert "served" in outcomes[:20]


def test_flag_serves_flagged_requests_and_names_detectors(flagging_repository, held_out):
    with running_gateway(flagging_repository, policy="flag") as srv:
        result = infer(srv.grpc_url, held_out[0][:1])
    params = result.get_response().parameters
    assert params["guard_verdict"].string_param == "adversarial"
    assert params["guard_flagged_by"].string_param == ",".join(demo_detector_names())
    assert params["guard_score"].double_param >= 1.0
    assert result.as_numpy("logits").shape == (1, 10)


def test_shadow_is_invisible_to_clients(flagging_repository, held_out):
    with running_gateway(flagging_repository, policy="shadow") as srv:
        result = infer(srv.grpc_url, held_out[0][:1])
        scraped = _scrape(srv.metrics_url)
    assert dict(result.get_response().parameters) == {}
    assert result.as_numpy("logits").shape == (1, 10)
    assert 'guard_flagged_total{detector="bit_depth_2",model="digits"} 1.0' in scraped


def _scrape(url):
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


class Exploding(BitDepthDetector):
    kind = "explode"

    def score(self, original, variants):
        raise RuntimeError("detector exploded")


@pytest.fixture
def exploding_repository(tmp_path, monkeypatch):
    monkeypatch.setitem(detectors.REGISTRY, "explode", Exploding)
    return copy_demo(tmp_path, lambda t: trusted(t.replace('type = "squeeze_bit_depth"', 'type = "explode"')))


def test_detector_failure_fails_closed(exploding_repository, held_out):
    with running_gateway(exploding_repository) as srv, pytest.raises(InferenceServerException) as info:
        infer(srv.grpc_url, held_out[0][:1])
    assert info.value.status() == "StatusCode.INTERNAL"
    assert "detector bit_depth_2 failed: detector exploded" in info.value.message()


def test_detector_failure_fails_open_when_configured(exploding_repository, held_out):
    path = exploding_repository / "digits" / "config.toml"
    path.write_text("fail_open = true\n" + path.read_text())
    with running_gateway(exploding_repository) as srv:
        result = infer(srv.grpc_url, held_out[0][:1])
    assert result.get_response().parameters["guard_verdict"].string_param == "unchecked"
    assert result.as_numpy("logits").shape == (1, 10)


def test_shadow_logs_flagged_requests(flagging_repository, held_out, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="guard.serving.dataplane"):
        with running_gateway(flagging_repository, policy="shadow") as srv:
            infer(srv.grpc_url, held_out[0][:1], request_id="watch-me")
    lines = [r.getMessage() for r in caplog.records if r.name == "guard.serving.dataplane"]
    assert any("flagged model=digits id=watch-me verdict=adversarial" in line for line in lines)
