"""`guard serve`'s security flags as a user meets them: a file that cannot be used stops the start
with one line naming the flag (never a traceback, never a token), and GUARD_AUTH_TOKENS is read when
--auth-tokens is not given."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tritonclient.grpc as triton

from tests.conftest import ROOT
from tests.security.clients import bearer, infer, refused, tls_client
from tests.security.conftest import ALICE
from tests.serving.process import ServeProcess

SECRET = "do-not-print-0123456789"


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "GUARD_AUTH_TOKENS"}
    return subprocess.run(
        [sys.executable, "-m", "guard", "serve", "--grpc-port", "0", "--metrics-port", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (
            ("--tls-cert", "{d}/missing.crt", "--tls-key", "{d}/server.key"),
            None,
            "--tls-cert {d}/missing.crt: cannot read",
        ),
        (("--tls-cert", "{d}/server.crt", "--tls-key", "{d}"), None, "--tls-key {d}: cannot read"),
        (("--tls-cert", "{d}/server.crt", "--tls-key", "{d}/camera.key"), None, "--tls-key {d}/camera.key"),
        (("--tls-client-ca", "{d}/guard-test-ca.crt"), None, "--tls-client-ca needs --tls-cert"),
        (("--auth-tokens", "{d}/tokens"), None, "--auth-tokens {d}/tokens: line 2: expected name:token"),
        ((), {"GUARD_AUTH_TOKENS": f"ok:{SECRET}\n{SECRET}"}, "GUARD_AUTH_TOKENS: line 2: expected name:token"),
    ],
)
def test_an_unusable_setting_is_one_line_naming_it(pki, args, env, says):
    directory = pki.ca.directory
    (directory / "tokens").write_text(f"ok:{SECRET}\n{SECRET}\n")
    result = serve(*(a.format(d=directory) for a in args), env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says.format(d=directory) in lines[0], result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr


def test_the_environment_tokens_are_used_and_the_file_wins_over_them(tmp_path, monkeypatch, held_out, pki):
    x = held_out[0][:1]
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:{ALICE}\n")
    monkeypatch.setenv("GUARD_AUTH_TOKENS", f"carol:{SECRET}\n")
    tls = ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    with ServeProcess(ROOT / "examples" / "guard_examples" / "repository", *tls, "--access-log") as guard:
        with tls_client(guard.grpc_url, pki.ca.cert) as client:
            assert infer(client, x, headers=bearer(SECRET)).as_numpy("logits").shape == (1, 10)
            assert refused(infer, client, x).status() == "StatusCode.UNAUTHENTICATED"
        with triton.InferenceServerClient(guard.grpc_url) as plain:  # TLS only
            assert refused(infer, plain, x).status() == "StatusCode.UNAVAILABLE"
    assert " client=carol" in guard.log and "tls=on auth=tokens" in guard.log
    with ServeProcess(ROOT / "examples" / "guard_examples" / "repository", "--auth-tokens", str(tokens)) as guard:
        with triton.InferenceServerClient(guard.grpc_url) as client:
            assert refused(infer, client, x, headers=bearer(SECRET)).status() == "StatusCode.UNAUTHENTICATED"
            assert infer(client, x, headers=bearer(ALICE)).as_numpy("logits").shape == (1, 10)
    assert "GUARD_AUTH_TOKENS is set but --auth-tokens wins" in guard.log
    assert "bearer tokens over plaintext gRPC" in guard.log
    assert SECRET not in guard.log and ALICE not in guard.log
