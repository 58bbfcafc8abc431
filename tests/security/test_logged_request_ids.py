"""The access log holds request ids, never metadata, and an id cannot carry a credential into it:
ids that look like ids are written as they are, anything else as a digest of it."""

from __future__ import annotations

import hashlib
import logging
import uuid

import pytest
import tritonclient.grpc as triton

from guard.serving.logs import MAX_HASHED_CHARS, loggable_id
from tests.conftest import running_gateway
from tests.security.clients import access_log, bearer, infer
from tests.security.conftest import ALICE
from tests.serving.helpers import noise_rows


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "plain",
    ["42", "cam-3-frame-1207", "4bf92f3577b34da6a3ce929d0e0e4736", str(uuid.uuid4()), str(uuid.uuid4()).upper()],
)
def test_ids_shaped_like_ids_are_logged_as_they_are(plain):
    assert loggable_id(plain) == plain


@pytest.mark.parametrize(
    "smuggled",
    [
        "Bearer sk-live-0123456789abcdefghij",
        "Bearer\\x20sk-live-0123456789abcdefghij",  # already escaped by the client: still a token
        "id\r\n2030-01-01 INFO guard.access: model=digits id=forged code=OK",
        "dG9rZW4rd2l0aC9iYXNlNjQ9PQ==",
        "x" * 33,  # longer than any id shape, as a guard token from secrets.token_urlsafe(32) is
    ],
)
def test_other_ids_are_logged_as_a_digest(smuggled):
    logged = loggable_id(smuggled)
    assert logged == digest(smuggled)
    assert "sk-" not in logged and " " not in logged and "\\" not in logged


def test_a_huge_id_costs_a_bounded_digest_and_keeps_its_length_apart():
    huge = "A" * (MAX_HASHED_CHARS * 1000)
    assert loggable_id(huge).startswith("sha256:") and len(loggable_id(huge)) == len("sha256:") + 16
    assert loggable_id(huge) != loggable_id(huge + "A")
    assert loggable_id("") == loggable_id(None) == "-"


def test_the_access_log_has_the_id_and_identity_never_the_metadata(tokens_file, held_out, caplog):
    caplog.set_level(logging.INFO)  # every logger: the flagged-request line and fault summaries too
    smuggled = f"Bearer {ALICE}"
    with running_gateway(auth_tokens=tokens_file) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        with access_log(caplog) as lines:
            infer(client, held_out[0][:1], headers=bearer(ALICE), request_id="ok-1")
            infer(client, noise_rows(1), headers=bearer(ALICE), request_id=smuggled)  # flagged: logged twice
    assert any(line.startswith("model=digits id=ok-1 verdict=") for line in lines), lines
    assert any(f" id={digest(smuggled)} " in line for line in lines), lines
    flagged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("flagged ")]
    assert flagged and f"id={digest(smuggled)} " in flagged[0]
    for record in caplog.records:
        assert ALICE not in record.getMessage() and "authorization" not in record.getMessage().lower()
