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


def probe(address, *service, **tls):
    env = {"GUARD_HEALTH_ADDRESS": address, "GUARD_HEALTH_TIMEOUT": "2", "PATH": "/usr/bin:/bin", **tls}
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


def test_over_mutual_tls_without_a_token(tmp_path):
    """As deploy/k8s/base probes a gateway that serves TLS with client certificates and bearer tokens:
    the pod's own certificate as the client's, the server checked under the name it was issued for."""
    from tests.security.certificates import Authority

    ca = Authority(tmp_path, "ca")
    server = ca.issue("server", "guard", server=True, client=True, hosts=("guard",))  # the Service's name
    (tmp_path / "tokens").write_text("alice:" + "a" * 32 + "\n")
    tls = {"tls_cert": server.cert, "tls_key": server.key, "tls_client_ca": ca.cert}
    with running_gateway(**tls, auth_tokens=tmp_path / "tokens") as srv:
        address = srv.grpc_url  # 127.0.0.1, which the certificate does not name
        env = {"GUARD_HEALTH_TLS_CA": str(ca.cert), "GUARD_HEALTH_TLS_SERVER_NAME": "guard"}
        client = {"GUARD_HEALTH_TLS_CERT": str(server.cert), "GUARD_HEALTH_TLS_KEY": str(server.key)}
        for service in ("", "digits"):
            result = probe(address, service, **env, **client)
            assert result.returncode == 0, result.stderr
        assert probe(address, **env).returncode == 1  # no client certificate
        assert probe(address, **client, GUARD_HEALTH_TLS_CA=str(ca.cert)).returncode == 1  # 127.0.0.1 is not "guard"
        assert probe(address).returncode == 1  # plaintext
        missing = probe(address, **env, GUARD_HEALTH_TLS_CERT=str(tmp_path / "nope"), GUARD_HEALTH_TLS_KEY="x")
        assert missing.returncode == 1 and "cannot read a TLS file" in missing.stderr
