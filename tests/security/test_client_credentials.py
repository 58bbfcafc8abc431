"""The project's own clients against a secured gateway (guard.tools.credentials): `guard replay` and
the evaluation's GatewayClient connect over TLS trusting --tls-ca, present a client certificate for
mutual TLS, and send the bearer token from --token-file (else GUARD_TOKEN; the file wins). Without
them they fail in one line, and the token appears in no output."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import grpc
import pytest

from guard.protocol.errors import SettingsError
from guard.tools.credentials import NONE, ClientCredentials
from guard.tools.evaluation.client import GatewayClient
from guard.tools.replay import check_access
from tests.conftest import ROOT, running_gateway
from tests.security.conftest import ALICE, BOB
from tests.serving.test_image_ingest import camera_repository, encode, photo
from tests.tools.test_replay import clip


@pytest.fixture
def repository(tmp_path):
    """One small model taking a camera's JPEG frames, which both clients can send."""
    return camera_repository(tmp_path)


@pytest.fixture
def secured(repository, pki, tokens_file):
    """TLS and bearer tokens; alice may read raw scores, which GatewayClient asks for."""
    settings = {"tls_cert": pki.server.cert, "tls_key": pki.server.key, "auth_tokens": tokens_file}
    with running_gateway(repository, explain_identities=("alice",), **settings) as srv:
        yield srv


def token_file(tmp_path, token: str):
    path = tmp_path / f"token-{token[:3]}"
    path.write_text(token + "\n")
    return path


def guard_replay(tmp_path, target: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    video = tmp_path / "clip.mp4"
    if not video.exists():
        clip(video, frames=4)
    command = [sys.executable, "-m", "guard", "replay", str(video), "--target", target, "--model", "cam"]
    command += ["--cameras", "2", "--fps", "20", "--frames", "4", "--out", str(tmp_path / "out"), *flags]
    environment = {k: v for k, v in os.environ.items() if k != "GUARD_TOKEN"} | (env or {})
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert ALICE not in result.stdout + result.stderr and BOB not in result.stdout + result.stderr
    return result


def test_replay_with_the_ca_and_a_token_file_is_served(secured, pki, tmp_path):
    result = guard_replay(
        tmp_path, secured.grpc_url, "--tls-ca", str(pki.ca.cert), "--token-file", str(token_file(tmp_path, ALICE))
    )
    assert result.returncode == 0, result.stderr
    timeline = json.loads((tmp_path / "out" / "timeline.json").read_text())
    assert sorted((a["camera"], a["frame"]) for a in timeline) == [(c, f) for c in range(2) for f in range(4)]
    assert {a["verdict"] for a in timeline} == {"clean"}


@pytest.mark.parametrize(
    ("tls", "token", "environment", "status"),
    [
        (False, None, None, "UNAVAILABLE"),  # plaintext to a TLS port
        (True, None, None, "UNAUTHENTICATED"),  # TLS, no token
        (True, "wrong-0123456789abcdef", None, "UNAUTHENTICATED"),
        (True, "wrong-0123456789abcdef", ALICE, "UNAUTHENTICATED"),  # the file wins over GUARD_TOKEN
    ],
)
def test_replay_without_the_right_credentials_fails_in_one_line(
    secured, pki, tmp_path, tls, token, environment, status
):
    flags = ["--tls-ca", str(pki.ca.cert)] if tls else []
    flags += ["--token-file", str(token_file(tmp_path, token))] if token else []
    result = guard_replay(tmp_path, secured.grpc_url, *flags, env={"GUARD_TOKEN": environment} if environment else None)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"guard replay: {secured.grpc_url}: StatusCode.{status}: "), line
    assert "--tls-ca" in line and not (tmp_path / "out").exists()


def test_a_missing_token_file_is_one_line_naming_the_flag(tmp_path):
    missing = tmp_path / "missing-token"
    result = guard_replay(tmp_path, "127.0.0.1:1", "--token-file", str(missing))
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith(f"--token-file {missing}: cannot read: No such file or directory"), line


def arguments(**flags) -> argparse.Namespace:
    return argparse.Namespace(**({"tls_ca": None, "tls_cert": None, "tls_key": None, "token_file": None} | flags))


def test_the_token_comes_from_the_file_else_the_environment(tmp_path):
    env = {"GUARD_TOKEN": BOB}
    from_file = ClientCredentials.from_args(arguments(token_file=token_file(tmp_path, ALICE)), env)
    assert from_file.headers() == {"authorization": f"Bearer {ALICE}"} and ALICE not in repr(from_file)
    assert ClientCredentials.from_args(arguments(), env).metadata() == (("authorization", f"Bearer {BOB}"),)
    assert ClientCredentials.from_args(arguments(), {}) == NONE and NONE.headers() is None
    assert NONE.triton_kwargs() == {}


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ({"tls_ca": "missing.crt"}, "--tls-ca {dir}/missing.crt: cannot read: No such file or directory"),
        ({"tls_ca": "ca.crt", "tls_cert": "c.crt"}, "--tls-cert and --tls-key go together"),
        ({"tls_cert": "c.crt", "tls_key": "c.key"}, "--tls-cert needs --tls-ca"),
        ({"token_file": "empty"}, "--token-file {dir}/empty: expected one token without spaces"),
    ],
)
def test_unusable_credentials_name_their_flag(tmp_path, flags, says):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "ca.crt").write_text("")
    with pytest.raises(SettingsError) as info:
        ClientCredentials.from_args(arguments(**{k: tmp_path / v for k, v in flags.items()}), {})
    assert info.value.message.startswith(says.format(dir=tmp_path)), info.value.message


def test_gateway_client_over_tls_with_a_token_serves_requests(secured, pki, tmp_path):
    items = [encode(photo(32, 32, i)) for i in range(3)]
    credentials = ClientCredentials(ca=pki.ca.cert, token=ALICE)
    with GatewayClient(secured.grpc_url, credentials=credentials) as client:
        client.wait_ready(["cam"])
        served = client.infer_encoded("cam", items)
    assert served.logits.shape == (3, 4) and served.verdicts.tolist() == ["clean"] * 3
    for without, code in (
        (ClientCredentials(ca=pki.ca.cert), grpc.StatusCode.UNAUTHENTICATED),
        (ClientCredentials(token=ALICE), grpc.StatusCode.UNAVAILABLE),
    ):
        with GatewayClient(secured.grpc_url, timeout=10, credentials=without) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.infer_encoded("cam", items[:1])
        assert info.value.code() == code


def test_both_clients_present_a_client_certificate_for_mutual_tls(repository, pki):
    settings = {"tls_cert": pki.server.cert, "tls_key": pki.server.key, "tls_client_ca": pki.ca.cert}
    camera = ClientCredentials(ca=pki.ca.cert, cert=pki.camera.cert, key=pki.camera.key)
    with running_gateway(repository, explain_identities=("*",), **settings) as srv:
        check_access(srv.grpc_url, "cam", camera)
        with pytest.raises(SystemExit, match="UNAVAILABLE"):
            check_access(srv.grpc_url, "cam", ClientCredentials(ca=pki.ca.cert))
        with GatewayClient(srv.grpc_url, credentials=camera) as client:
            assert client.infer_encoded("cam", [encode(photo(32, 32, 0))]).verdicts.tolist() == ["clean"]
