"""The container HEALTHCHECK script (deploy/docker/healthcheck.py) against a live gateway: it runs in
the image with nothing but the installed grpc packages, so it is run here the same way, as a script."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import running_gateway
from tests.deploy.helpers import DOCKER


@pytest.fixture(scope="module")
def gateway_address():
    with running_gateway() as srv:
        yield srv.grpc_url


def probe(address, *service):
    env = {"GUARD_HEALTH_ADDRESS": address, "GUARD_HEALTH_TIMEOUT": "2", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), *service], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("service", ["", "digits", "inference.GRPCInferenceService"])
def test_serving(gateway_address, service):
    result = probe(gateway_address, service)
    assert result.returncode == 0, result.stderr


def test_unknown_service_is_unhealthy(gateway_address):
    result = probe(gateway_address, "no_such_model")
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr


def test_no_server_is_unhealthy():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = probe(f"127.0.0.1:{port}")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
