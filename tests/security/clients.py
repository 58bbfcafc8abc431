"""Clients of a secured gateway: tritonclient over TLS (optionally with a client certificate), bearer
headers, and the helpers the security tests share."""

from __future__ import annotations

import contextlib
import logging

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.security.certificates import Issued
from tests.serving.helpers import infer_input


def tls_client(url: str, root, client: Issued | None = None) -> triton.InferenceServerClient:
    """tritonclient over TLS trusting `root` (a CA's certificate file), presenting `client` if given."""
    return triton.InferenceServerClient(
        url,
        ssl=True,
        root_certificates=str(root),
        private_key=str(client.key) if client else None,
        certificate_chain=str(client.cert) if client else None,
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def infer(client: triton.InferenceServerClient, x, **kwargs):
    return client.infer("digits", [infer_input(x)], client_timeout=30, **kwargs)


def refused(call, *args, **kwargs) -> InferenceServerException:
    """The error a call fails with (it must fail)."""
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def health(channel: grpc.Channel, service: str = "") -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def access_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "guard.access"]


@contextlib.contextmanager
def access_log(caplog):
    """The guard.access lines written inside the block."""
    caplog.set_level(logging.INFO, logger="guard.access")
    lines: list[str] = []
    start = len(caplog.records)
    yield lines
    lines += [r.getMessage() for r in caplog.records[start:] if r.name == "guard.access"]


def client_field(line: str) -> str:
    """The `client=` field of an access line (the last field)."""
    return line.rsplit(" client=", 1)[1]
