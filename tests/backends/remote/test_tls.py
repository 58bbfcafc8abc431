"""TLS to the upstream, with a client certificate (mutual TLS): one self-signed certificate made
by openssl serves as the CA, the upstream's certificate and the guard's."""

import shutil
import subprocess
from concurrent import futures

import grpc
import pytest
import tritonclient.grpc as triton

from guard.protocol.proto import inference_pb2_grpc as pb_grpc
from tests.backends.remote.conftest import FakeUpstream, drop_detectors, infer, remote_repository
from tests.conftest import running_gateway


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=upstream",
            "-addext",
            "subjectAltName=DNS:upstream.local,IP:127.0.0.1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return (tmp_path / "cert.pem").read_bytes(), (tmp_path / "key.pem").read_bytes()


def test_mutual_tls_to_the_upstream(tmp_path, certificate, held_out):
    cert, key = certificate
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FakeUpstream(), server)
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=cert, require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        tls = (
            '\n[backend.tls]\nca = "upstream.pem"\ncert = "upstream.pem"\nkey = "upstream.key"\n'
            'server_name = "upstream.local"\n'
        )
        repository = remote_repository(tmp_path, f"127.0.0.1:{port}", edit=lambda text: drop_detectors(text) + tls)
        (repository / "digits" / "upstream.pem").write_bytes(cert)
        (repository / "digits" / "upstream.key").write_bytes(key)
        with running_gateway(repository) as front, triton.InferenceServerClient(front.grpc_url) as client:
            assert client.is_model_ready("digits")
            assert infer(client, held_out[0][:2]).as_numpy("logits").shape == (2, 10)
    finally:
        server.stop(0)
