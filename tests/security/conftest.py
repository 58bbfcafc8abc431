"""Fixtures for the gateway's transport security: certificates made per test, token files, and
tritonclient clients that use them (helpers in tests/security/clients.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.security.certificates import Authority, Issued


@dataclass(frozen=True)
class Pki:
    ca: Authority
    """Signs the server's certificate and the clients' (the gateway's --tls-client-ca)."""
    other: Authority
    """A CA the gateway does not trust."""
    server: Issued
    camera: Issued
    """A client certificate: subject O=Acme,CN=camera-7."""
    operator: Issued
    """Another client certificate from the same CA: subject CN=operator."""
    stranger: Issued
    """A client certificate from `other`, with the same subject as `camera`."""


@pytest.fixture
def pki(tmp_path) -> Pki:
    ca = Authority(tmp_path / "ca", "guard-test-ca")
    other = Authority(tmp_path / "other", "other-ca")
    return Pki(
        ca=ca,
        other=other,
        server=ca.issue("server", "guard.test", server=True),
        camera=ca.issue("camera", "camera-7", organization="Acme"),
        operator=ca.issue("operator", "operator"),
        stranger=other.issue("stranger", "camera-7", organization="Acme"),
    )


ALICE = "alice-0123456789abcdefghijklmnop"
BOB = "bob-ZYXWVUTSRQPONMLKJIHGFEDCBA98"


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# who may call\n\nalice:{ALICE}\n  bob : {BOB}  \n")
    return path
