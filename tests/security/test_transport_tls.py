"""TLS and mutual TLS on the gateway's gRPC port, with real certificates and real clients.

- With --tls-cert/--tls-key the port speaks only TLS: a client that trusts the CA is served, a
  plaintext one is not.
- With --tls-client-ca a client must present a certificate that CA signed: none, or one from
  another CA, and the handshake fails; the certificate's subject is the client's identity.
- The files are read again when they change, without a restart; files that cannot be used are
  logged and the certificate in use stays.
"""

from __future__ import annotations

import logging
import os
import shutil

import grpc
import pytest
import tritonclient.grpc as triton

from tests.conftest import running_gateway
from tests.security.clients import access_log, client_field, health, infer, refused, tls_client
from tests.serving.process import wait_until


def settings(pki, mutual: bool = False, **extra):
    tls = {"tls_cert": pki.server.cert, "tls_key": pki.server.key}
    if mutual:
        tls["tls_client_ca"] = pki.ca.cert
    return {**tls, **extra}


def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(pki, held_out):
    x = held_out[0][:2]
    with running_gateway(**settings(pki)) as srv:
        with tls_client(srv.grpc_url, pki.ca.cert) as client:
            assert client.is_server_ready()
            assert infer(client, x).as_numpy("logits").shape == (2, 10)
        with triton.InferenceServerClient(srv.grpc_url) as plain:
            error = refused(infer, plain, x)
            assert error.status() == "StatusCode.UNAVAILABLE", error
        # A client that does not trust the server's CA refuses the server.
        with tls_client(srv.grpc_url, pki.other.cert) as doubting:
            assert refused(infer, doubting, x).status() == "StatusCode.UNAVAILABLE"
        # Health answers over TLS, to a client with no credentials beyond the CA.
        with grpc.secure_channel(srv.grpc_url, grpc.ssl_channel_credentials(pki.ca.pem)) as channel:
            assert health(channel) == "SERVING"


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(pki, held_out):
    x = held_out[0][:1]
    with running_gateway(**settings(pki, mutual=True)) as srv:
        with tls_client(srv.grpc_url, pki.ca.cert, pki.camera) as client:
            assert infer(client, x).as_numpy("logits").shape == (1, 10)
        with tls_client(srv.grpc_url, pki.ca.cert) as anonymous:
            assert refused(infer, anonymous, x).status() == "StatusCode.UNAVAILABLE"
        # Same subject, signed by a CA the gateway does not trust.
        with tls_client(srv.grpc_url, pki.ca.cert, pki.stranger) as stranger:
            assert refused(infer, stranger, x).status() == "StatusCode.UNAVAILABLE"
        with triton.InferenceServerClient(srv.grpc_url) as plain:
            assert refused(infer, plain, x).status() == "StatusCode.UNAVAILABLE"


def test_the_client_certificate_subject_is_the_identity(pki, held_out, caplog):
    """Seen in the access line, and in what a grant to one subject allows: the camera's certificate
    gets raw scores, the operator's (same CA) is refused them."""
    x = held_out[0][:1]
    camera = "O=Acme,CN=camera-7"
    with running_gateway(**settings(pki, mutual=True, explain_identities=(camera,))) as srv:
        with access_log(caplog) as lines, tls_client(srv.grpc_url, pki.ca.cert, pki.camera) as client:
            answer = infer(client, x, parameters={"guard_explain": True}, request_id="cam-1")
            assert "guard_detector_scores" in answer.get_response().parameters
        with tls_client(srv.grpc_url, pki.ca.cert, pki.operator) as operator:
            error = refused(infer, operator, x, parameters={"guard_explain": True})
            assert error.status() == "StatusCode.PERMISSION_DENIED" and "CN=operator" in error.message()
            assert infer(operator, x).as_numpy("logits").shape == (1, 10)  # served without asking
    (line,) = [line for line in lines if " id=cam-1 " in line]
    assert client_field(line) == camera


def replace(source, target) -> None:
    """Swap a file in with one rename, as a Kubernetes Secret volume and cert-manager do."""
    staged = target.with_name(target.name + ".new")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


def test_certificates_are_reloaded_when_the_files_change(pki, tmp_path, held_out, caplog):
    """The server certificate and the client CA both move to a new CA while the gateway runs: new
    connections get the new certificate and need client certificates the new CA signed."""
    caplog.set_level(logging.INFO, logger="guard.serving.transport")
    x = held_out[0][:1]
    live = tmp_path / "live"
    live.mkdir()
    cert, key, client_ca = live / "tls.crt", live / "tls.key", live / "ca.crt"
    for source, target in ((pki.server.cert, cert), (pki.server.key, key), (pki.ca.cert, client_ca)):
        shutil.copyfile(source, target)
    renewed = pki.other.issue("server-renewed", "guard.test", server=True)
    with running_gateway(tls_cert=cert, tls_key=key, tls_client_ca=client_ca) as srv:
        port = srv.server.grpc_port
        with tls_client(srv.grpc_url, pki.ca.cert, pki.camera) as before:
            assert infer(before, x).as_numpy("logits").shape == (1, 10)

        for source, target in ((renewed.key, key), (renewed.cert, cert), (pki.other.cert, client_ca)):
            replace(source, target)

        def served_by_the_new_ca() -> bool:
            with tls_client(srv.grpc_url, pki.other.cert, pki.stranger) as after:
                try:
                    return infer(after, x).as_numpy("logits").shape == (1, 10)
                except Exception:  # noqa: BLE001 - not yet: the files may still be on their way
                    return False

        wait_until(served_by_the_new_ca, timeout=10, what="a handshake with the renewed certificate")
        assert srv.server.grpc_port == port and srv.server.tls.reloads >= 1  # the same server, not restarted
        with tls_client(srv.grpc_url, pki.ca.cert, pki.camera) as old:
            assert refused(infer, old, x).status() == "StatusCode.UNAVAILABLE"
    assert any("TLS certificates reloaded" in r.getMessage() for r in caplog.records)


def test_files_that_cannot_be_used_keep_the_certificate_in_use(pki, tmp_path, held_out, caplog):
    caplog.set_level(logging.INFO, logger="guard.serving.transport")
    x = held_out[0][:1]
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(pki.server.cert, cert)
    shutil.copyfile(pki.server.key, key)
    with running_gateway(tls_cert=cert, tls_key=key) as srv:
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        for _ in range(3):  # each a new connection, so a new handshake asking for the files
            with tls_client(srv.grpc_url, pki.ca.cert) as client:
                assert infer(client, x).as_numpy("logits").shape == (1, 10)
        assert srv.server.tls.reloads == 0
    warnings = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warnings) == 1 and "--tls-cert" in warnings[0], warnings


@pytest.mark.parametrize(
    ("given", "flag"),
    [
        ({"tls_cert": "missing.crt", "tls_key": "server.key"}, "--tls-cert"),
        ({"tls_cert": "server.crt", "tls_key": "missing.key"}, "--tls-key"),
        ({"tls_cert": "server.crt", "tls_key": "server.key", "tls_client_ca": "missing.crt"}, "--tls-client-ca"),
        ({"tls_cert": "server.crt", "tls_key": "camera.key"}, "--tls-key"),  # not the certificate's key
        ({"tls_cert": "server.crt"}, "--tls-key"),
        ({"tls_client_ca": "guard-test-ca.crt"}, "--tls-client-ca"),
    ],
)
def test_unusable_tls_settings_fail_at_start_naming_the_flag(pki, given, flag):
    from guard.protocol.errors import SettingsError

    paths = {key: pki.ca.directory / name for key, name in given.items()}
    with pytest.raises(SettingsError) as info, running_gateway(**paths):
        pass
    assert flag in info.value.message and "\n" not in info.value.message
