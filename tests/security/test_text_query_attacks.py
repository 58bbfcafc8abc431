"""Query-attack detection on a text model ([preprocess] kind text): the fingerprint reads the
texts' characters, through a live gateway and tritonclient. A character attack's queries (one edit
each on the same review) are near-duplicates; different reviews are not."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.conftest import running_gateway

TOKENS = {"attacker": "attacker-0123456789abcdefghij", "reader": "reader-abcdefghijklmnopqrstu"}
CLIENTS = '\n[clients]\nquery_attack = "flag"\nrule = "duplicates"\nmin_near = 2\n'
"""Blacklight's rule (near-duplicates alone), so that the check's reading of text is what is tested,
whatever the small model answers."""


@pytest.fixture(scope="module")
def text_client(tmp_path_factory):
    try:
        from tests.text.model import snippets, train, write_config, write_model
    except (ImportError, AssertionError) as exc:  # the model's tokenizer ships in a package of its own
        pytest.skip(f"no text model to serve: {exc}")
    root = tmp_path_factory.mktemp("text-queries")
    write_model(root / "bag", train(epochs=1))
    write_config(root / "bag", detectors=CLIENTS)
    tokens = "\n".join(f"{name}:{token}" for name, token in TOKENS.items())
    with running_gateway(root, auth_tokens_text=tokens) as server:
        client = triton.InferenceServerClient(server.grpc_url)
        yield client, snippets()[0]
        client.close()


def ask(client: triton.InferenceServerClient, who: str, text: str) -> str:
    tensor = triton.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    result = client.infer("bag", [tensor], headers={"authorization": f"Bearer {TOKENS[who]}"})
    return result.get_response().parameters["guard_client_verdict"].string_param


def test_a_character_attack_is_flagged_and_distinct_reviews_are_not(text_client):
    client, reviews = text_client
    review = next(r for r in reviews if len(r) > 80)
    # Each query swaps one more pair of letters, as a character attack edits its review.
    letters = [i for i in range(len(review) - 1) if review[i : i + 2].isalpha()]
    queries, text = [review], review
    for i in letters[:: max(1, len(letters) // 6)][:6]:
        text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        queries.append(text)
    verdicts = [ask(client, "attacker", q) for q in queries]
    assert verdicts[:2] == ["clean", "clean"] and verdicts[2] == "query_attack"
    # Another identity reading forty distinct reviews, one of them twice.
    distinct = [r for r in reviews if len(r) > 40][:40]
    assert {ask(client, "reader", r) for r in [*distinct, distinct[0]]} == {"clean"}
