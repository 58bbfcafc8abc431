"""Raw detector scores (guard_explain) only for identities granted them.

Without authentication everyone may ask, as before (the README's tritonclient examples); with it,
only the identities --explain-identities names, and a refusal is PERMISSION_DENIED naming why,
counted as a client's fault, before any work is done for the request."""

from __future__ import annotations

import json

import tritonclient.grpc as triton

from guard.serving.grants import ExplainGrants
from tests.conftest import demo_detector_names, running_gateway
from tests.security.clients import access_log, bearer, client_field, infer, refused
from tests.security.conftest import ALICE, BOB
from tests.security.test_bearer_tokens import stream_answers
from tests.serving.helpers import requests_total

EXPLAIN = {"guard_explain": True}


def scores(result) -> dict[str, float]:
    return json.loads(result.get_response().parameters["guard_detector_scores"].string_param)


def test_the_default_grant_follows_authentication():
    assert ExplainGrants.resolve(None, authenticated=False).allows("10.0.0.7")
    assert not ExplainGrants.resolve(None, authenticated=True).allows("alice")
    granted = ExplainGrants.resolve(["alice", " ", "bob "], authenticated=True)
    assert granted.allows("alice") and granted.allows("bob") and not granted.allows("carol")
    assert ExplainGrants.resolve(["*"], authenticated=True).allows("anyone")


def test_without_authentication_everyone_may_explain_and_the_identity_is_the_peer(held_out, caplog):
    with running_gateway() as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        with access_log(caplog) as lines:
            result = infer(client, held_out[0][:1], parameters=EXPLAIN, request_id="p-1")
    assert scores(result)
    (line,) = lines
    assert client_field(line) == "127.0.0.1"  # the address without the connection's port


def test_with_tokens_nobody_may_explain_by_default(tokens_file, held_out):
    x = held_out[0][:1]
    with running_gateway(auth_tokens=tokens_file) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        error = refused(infer, client, x, headers=bearer(ALICE), parameters=EXPLAIN)
        assert error.status() == "StatusCode.PERMISSION_DENIED"
        assert "guard_explain" in error.message() and "'alice'" in error.message() and ALICE not in error.message()
        served = infer(client, x, headers=bearer(ALICE), parameters={"guard_explain": False})
        assert "guard_detector_scores" not in served.get_response().parameters
        assert requests_total(srv, "PERMISSION_DENIED") == 1 and requests_total(srv, "OK") == 1
        assert requests_total(srv, "INTERNAL") == 0


def test_a_granted_identity_gets_scores_and_others_are_refused(tokens_file, held_out):
    x = held_out[0][:1]
    with (
        running_gateway(auth_tokens=tokens_file, explain_identities=("alice",)) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        assert set(scores(infer(client, x, headers=bearer(ALICE), parameters=EXPLAIN))) == set(demo_detector_names())
        error = refused(infer, client, x, headers=bearer(BOB), parameters=EXPLAIN)
        assert error.status() == "StatusCode.PERMISSION_DENIED" and "'bob'" in error.message()
        # On a stream, the identity of the stream's token decides.
        ((granted, none),) = stream_answers(client, x, bearer(ALICE), parameters=EXPLAIN)
        assert none is None and scores(granted)
        ((result, denied),) = stream_answers(client, x, bearer(BOB), parameters=EXPLAIN)
        assert result is None and "not granted to 'bob'" in denied.message(), denied
