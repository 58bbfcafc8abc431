"""Bearer-token authentication (--auth-tokens FILE, or GUARD_AUTH_TOKENS): the token table, and a
live gateway that refuses calls without a configured token (UNAUTHENTICATED, never repeating what
was sent) while its health checks stay open for probes."""

from __future__ import annotations

import hmac
import logging
import queue

import grpc
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.protocol.errors import SettingsError
from guard.serving import tokens
from guard.serving.tokens import load_tokens, parse_tokens
from tests.conftest import running_gateway
from tests.security.clients import access_log, bearer, client_field, health, infer, refused
from tests.security.conftest import ALICE, BOB
from tests.serving.helpers import infer_input

SECRET = "s3cret-value-that-must-not-leak"


def test_the_file_gives_each_token_its_name(tokens_file):
    table = load_tokens(tokens_file, None)
    assert table.names == ("alice", "bob")
    assert table.match(ALICE) == "alice" and table.match(BOB) == "bob"
    assert table.match(ALICE[:-1]) is None and table.match(ALICE + "x") is None and table.match("") is None


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        (f"# ok\nalice:{ALICE}\n{SECRET}\n", 3, "expected name:token"),
        (f"alice:{ALICE}\n\n:{SECRET}\n", 3, "expected name:token"),
        (f"alice:{ALICE}\nbob:\n", 2, "expected name:token"),
        (f"bad name:{SECRET}\n", 1, "a name is"),
        (f"alice:{SECRET}\nalice:{SECRET}x\n", 2, "given twice"),
        (f"alice:{SECRET}\nbob:{SECRET}\n", 2, "also another name's"),
        ("alice:short\n", 1, "at least 16 characters"),
        (f"alice:{SECRET} {SECRET}\n", 1, "without spaces"),
    ],
)
def test_malformed_lines_are_refused_by_line_number_without_the_token(text, line, says):
    with pytest.raises(SettingsError) as info:
        parse_tokens(text, "--auth-tokens t")
    message = info.value.message
    assert f"--auth-tokens t: line {line}: " in message and says in message, message
    assert SECRET not in message and "short" not in message


def test_a_table_without_tokens_is_refused():
    with pytest.raises(SettingsError, match="no name:token line"):
        parse_tokens("# nobody\n\n", "GUARD_AUTH_TOKENS")


def test_the_file_wins_over_the_environment(tokens_file, tmp_path):
    assert load_tokens(tokens_file, f"carol:{SECRET}").names == ("alice", "bob")
    assert load_tokens(None, f"carol:{SECRET}").names == ("carol",)
    assert load_tokens(None, None) is None
    with pytest.raises(SettingsError, match="--auth-tokens .*missing: cannot read"):
        load_tokens(tmp_path / "missing", None)


def test_every_token_is_compared_whichever_matches(tokens_file, monkeypatch):
    """No early exit: the time a match takes must not say which entry matched (or how many precede it)."""
    table = parse_tokens("".join(f"user{i}:{SECRET}-{i:04d}\n" for i in range(20)), "t")
    calls = []
    compare = hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return compare(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", counting)
    for presented, name in ((f"{SECRET}-0000", "user0"), (f"{SECRET}-0019", "user19"), ("wrong" * 4, None)):
        calls.clear()
        assert table.match(presented) == name
        assert len(calls) == 20


def test_calls_without_a_configured_token_are_unauthenticated(tokens_file, held_out, caplog):
    caplog.set_level(logging.DEBUG)
    x = held_out[0][:1]
    with running_gateway(auth_tokens=tokens_file) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        for headers in (
            None,
            bearer(SECRET),
            bearer(ALICE[:-1]),
            {"authorization": ALICE},
            {"authorization": "Basic x"},
        ):
            error = refused(infer, client, x, headers=headers)
            assert error.status() == "StatusCode.UNAUTHENTICATED", (headers, error)
            assert SECRET not in error.message() and ALICE[:-1] not in error.message()
        # Metadata and the repository are refused too...
        for model_call in (client.get_model_metadata, client.get_model_config):
            assert refused(model_call, "digits").status() == "StatusCode.UNAUTHENTICATED"
        for call in (
            client.get_server_metadata,
            client.get_model_repository_index,
            client.get_system_shared_memory_status,
            client.get_inference_statistics,
        ):
            assert refused(call).status() == "StatusCode.UNAUTHENTICATED"
        # ...while readiness and grpc.health.v1 answer anyone: probes carry no token.
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
        with grpc.insecure_channel(srv.grpc_url) as channel:
            assert health(channel) == "SERVING" and health(channel, "digits") == "SERVING"
        # The token holders are served.
        assert infer(client, x, headers=bearer(ALICE)).as_numpy("logits").shape == (1, 10)
        assert client.get_model_metadata("digits", headers=bearer(BOB)).name == "digits"
    for record in caplog.records:  # nothing a client sent as a credential reaches any log line
        assert SECRET not in record.getMessage() and ALICE not in record.getMessage()


def test_the_token_name_is_the_identity(tokens_file, held_out, caplog):
    x = held_out[0][:1]
    with running_gateway(auth_tokens=tokens_file) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        with access_log(caplog) as lines:
            infer(client, x, headers=bearer(ALICE), request_id="a-1")
            infer(client, x, headers=bearer(BOB), request_id="b-1")
    identities = {line.split(" id=", 1)[1].split(" ", 1)[0]: client_field(line) for line in lines}
    assert identities == {"a-1": "alice", "b-1": "bob"}
    assert not any(ALICE in line or BOB in line for line in lines)


def test_inline_tokens_authenticate_like_the_file(held_out):
    """ServerSettings.auth_tokens_text: what guard serve reads from GUARD_AUTH_TOKENS."""
    x = held_out[0][:1]
    with running_gateway(auth_tokens_text=f"carol:{SECRET}\n") as srv, triton.InferenceServerClient(srv.grpc_url) as c:
        assert refused(infer, c, x).status() == "StatusCode.UNAUTHENTICATED"
        assert infer(c, x, headers=bearer(SECRET)).as_numpy("logits").shape == (1, 10)


def stream_answers(client: triton.InferenceServerClient, x, headers, count: int = 1, **kwargs):
    answers: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)), headers=headers)
    try:
        for i in range(count):
            try:
                client.async_stream_infer("digits", [infer_input(x)], request_id=f"s-{i}", **kwargs)
            except InferenceServerException:  # the server ended the stream already: its status is an answer
                return [answers.get(timeout=30)]
        return [answers.get(timeout=30) for _ in range(count)]
    finally:
        client.stop_stream()


def test_a_stream_is_authenticated_once_for_all_its_requests(tokens_file, held_out, caplog):
    x = held_out[0][:1]
    with running_gateway(auth_tokens=tokens_file) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        ((result, error),) = stream_answers(client, x, None)
        assert result is None and error.status() == "StatusCode.UNAUTHENTICATED", error
        with access_log(caplog) as lines:
            answers = stream_answers(client, x, bearer(BOB), count=3)
        assert all(error is None and result.as_numpy("logits").shape == (1, 10) for result, error in answers)
    assert sorted(client_field(line) for line in lines) == ["bob"] * 3


def test_a_changed_tokens_file_is_read_again_and_a_broken_one_keeps_the_tokens_in_use(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text(f"alice:{ALICE}\n")
    clock = [0.0]
    table = tokens.TokenFile(path, clock=lambda: clock[0])
    assert table.match(ALICE) == "alice" and table.match(BOB) is None
    path.write_text(f"bob:{BOB}\n")  # alice revoked, bob added
    assert table.match(ALICE) == "alice"  # within CHECK_SECONDS the file is not looked at
    clock[0] += tokens.CHECK_SECONDS
    assert table.match(ALICE) is None and table.match(BOB) == "bob" and table.names == ("bob",)
    caplog.set_level(logging.WARNING, logger="guard.serving.tokens")
    path.write_text(f"bob:{BOB}\ncarol:{SECRET}\nbroken line\n")  # half-written
    for _ in range(3):
        clock[0] += tokens.CHECK_SECONDS
        assert table.match(BOB) == "bob" and table.match(SECRET) is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "keeping the tokens in use" in warnings[0] and "line 3" in warnings[0]
    assert SECRET not in warnings[0] and "broken line" not in warnings[0]
    path.unlink()  # gone: still the tokens in use
    clock[0] += tokens.CHECK_SECONDS
    assert table.match(BOB) == "bob"


def test_a_revoked_token_is_refused_by_a_running_gateway(tmp_path, held_out):
    import time

    path = tmp_path / "tokens"
    path.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    x = held_out[0][:1]
    with running_gateway(auth_tokens=path) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        assert infer(client, x, headers=bearer(ALICE)).as_numpy("logits").shape == (1, 10)
        path.write_text(f"bob:{BOB}\n")
        time.sleep(tokens.CHECK_SECONDS + 0.1)
        assert refused(infer, client, x, headers=bearer(ALICE)).status() == "StatusCode.UNAUTHENTICATED"
        assert infer(client, x, headers=bearer(BOB)).as_numpy("logits").shape == (1, 10)
