"""What the gateway shows to whoever can reach it: thresholds on /metrics only when asked for,
/metrics on its own bind address, reflection only when on."""

from __future__ import annotations

import urllib.error
import urllib.request

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import demo_detector_names, running_gateway


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def test_thresholds_are_not_published_by_default():
    with running_gateway() as srv:
        text = scrape(srv.metrics_url)
    assert "guard_queue_capacity{" in text  # the model's gauges are there...
    assert "guard_detector_threshold" not in text  # ...its thresholds are not


def test_thresholds_are_published_when_configured():
    with running_gateway(publish_thresholds=True) as srv:
        text = scrape(srv.metrics_url)
    published = {
        sample.labels["detector"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "guard_detector_threshold" and sample.labels["model"] == "digits"
    }
    assert set(published) == set(demo_detector_names()) and all(value > 0 for value in published.values())


def test_metrics_bind_their_own_address_whatever_grpc_binds():
    """gRPC on 127.0.0.2, /metrics on the default 127.0.0.1: each reachable only where it is bound."""
    with running_gateway(host="127.0.0.2") as srv:
        port = srv.server.metrics_port
        assert srv.server.settings.metrics_host == "127.0.0.1"
        assert "guard_queue_depth" in scrape(f"http://127.0.0.1:{port}/metrics")
        with pytest.raises(urllib.error.URLError):
            scrape(f"http://127.0.0.2:{port}/metrics")
    with running_gateway(metrics_host="127.0.0.2") as srv:
        assert srv.metrics_url.startswith("http://127.0.0.2:")
        assert "guard_queue_depth" in scrape(srv.metrics_url)
        with pytest.raises(urllib.error.URLError):
            scrape(f"http://127.0.0.1:{srv.server.metrics_port}/metrics")


def services(url: str) -> set[str] | grpc.StatusCode:
    with grpc.insecure_channel(url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        try:
            (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        except grpc.RpcError as exc:
            return exc.code()
        return {s.name for s in reply.list_services_response.service}


def test_reflection_can_be_turned_off():
    with running_gateway() as srv:
        assert "inference.GRPCInferenceService" in services(srv.grpc_url)
    with running_gateway(reflection=False) as srv:
        assert services(srv.grpc_url) == grpc.StatusCode.UNIMPLEMENTED
