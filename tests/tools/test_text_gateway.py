"""GatewayOracle (guard.tools.evaluation.text_gateway) against a live gateway serving a text model:
answers in the order asked, one judged request per query, and refusals read as no answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from guard.tools.evaluation.text_attacks import REGISTRY
from guard.tools.evaluation.text_gateway import GatewayOracle
from tests.conftest import running_gateway


@pytest.fixture(scope="module")
def text_gateway(tmp_path_factory):
    """A live gateway serving the text path's small real model (tests/text/model.py: a BagClassifier
    behind the model's own tokenizer, preprocess kind `text`), `bag`, without detectors, policy flag."""
    try:
        from tests.text.model import train, write_config, write_model
    except (ImportError, AssertionError) as exc:  # the model's tokenizer ships in a package of its own
        pytest.skip(f"no text model to serve: {exc}")
    root = tmp_path_factory.mktemp("text-gateway")
    write_model(root / "bag", train(epochs=1))
    write_config(root / "bag")
    with running_gateway(root) as server:
        yield server.grpc_url, root


def guarded(bag: Path, repository: Path, policy: str, threshold: float) -> Path:
    """A repository holding a copy of `bag` as `guarded`, with the word-deletion detector at this
    threshold, served as written (calibration mode trust)."""
    from tests.text.model import write_config

    shutil.copytree(bag, repository / "guarded")
    table = '\n[calibration]\nmode = "trust"\n\n[[detectors]]\nname = "deletion"\ntype = "word_deletion"\n'
    write_config(repository / "guarded", policy=policy, detectors=f"{table}threshold = {threshold!r}\n")
    return repository


def alone(directory: Path, texts: list[str]) -> np.ndarray:
    """The ONNX model's probabilities for each text run alone: what the gateway must answer."""
    import onnxruntime as ort

    from tests.text.model import encode

    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = []
    for text in texts:
        ids, mask = encode([text])
        logits.append(session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0][0])
    exp = np.exp(np.array(logits, np.float64))
    return exp / exp.sum(1, keepdims=True)


def test_the_gateway_oracle_answers_each_text_in_order_with_its_verdict(text_gateway):
    url, root = text_gateway
    texts = ["A gem.", "Dull, dull, dull.", "Сafé society with a wіnk", "It is not bad at all", "Meh", "Oh no!"]
    with GatewayOracle(url, "bag", window=2) as oracle:  # 6 texts, 2 in flight: answers may come out of turn
        probabilities = oracle(texts)
        again = oracle(texts[::-1])
    np.testing.assert_allclose(probabilities, alone(root / "bag", texts), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(again, probabilities[::-1], rtol=1e-6)
    assert [a.text for a in oracle.answers] == texts + texts[::-1]
    for answer in oracle.answers:
        assert answer.verdict == "clean" and not answer.blocked
        assert set(answer.parameters) >= {"guard_verdict", "guard_score", "guard_flagged_by"}


def test_an_attack_through_the_gateway_spends_its_queries_there(text_gateway):
    """Every query is one request the gateway judged: the results' queries add up to its answers,
    in order, and each result's label is what the gateway answers for its adversarial text."""
    url, _ = text_gateway
    texts = ["A warm, funny and touching film.", "A tedious, lifeless mess.", "Great fun"]
    with GatewayOracle(url, "bag") as oracle:
        results = REGISTRY["swap"](max_queries=12).run(oracle, texts, seed=0)
        asked = len(oracle.answers)
        labels = oracle(texts).argmax(1)
        answered = oracle([r.adversarial for r in results]).argmax(1)
    assert asked == sum(r.queries for r in results) and all(r.queries <= 12 for r in results)
    starts = np.cumsum([0] + [r.queries for r in results])[:-1]
    assert [oracle.answers[i].text for i in starts] == texts  # each sentence's queries start with itself
    assert [r.success for r in results] == list(answered != labels)


def test_queries_the_guard_blocks_read_as_no_answer(text_gateway, tmp_path):
    """Under policy enforce, with the threshold at the median of the texts' own word-deletion
    scores (measured on this host, under policy flag): exactly the texts at or over it are refused,
    each a NaN row and a `blocked` answer in its own place, and the others answered as alone."""
    import tritonclient.grpc as triton

    _, root = text_gateway
    texts = ["A gem.", "Dull, dull, dull.", "It is not bad at all", "Meh", "Oh no!", "A tedious, lifeless mess."]
    scores = []
    with running_gateway(guarded(root / "bag", tmp_path / "scored", "flag", 1e9)) as server:  # scores, no flags
        client = triton.InferenceServerClient(server.grpc_url)
        for text in texts:
            tensor = triton.InferInput("text", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
            response = client.infer("guarded", [tensor], parameters={"guard_explain": True}).get_response()
            scores.append(json.loads(response.parameters["guard_detector_scores"].string_param)["deletion"])
        client.close()
    threshold = float(np.median(scores))
    repository = guarded(root / "bag", tmp_path / "enforced", "enforce", threshold)
    with running_gateway(repository) as server, GatewayOracle(server.grpc_url, "guarded", window=3) as oracle:
        probabilities = oracle(texts)
        results = REGISTRY["delete"](max_queries=10).run(oracle, texts, seed=0)
    refused = np.array(scores) >= threshold
    assert 0 < refused.sum() < len(texts)
    assert [a.blocked for a in oracle.answers[: len(texts)]] == refused.tolist()
    assert [a.verdict == "blocked" for a in oracle.answers[: len(texts)]] == refused.tolist()
    assert np.isnan(probabilities[refused]).all()
    np.testing.assert_allclose(probabilities[~refused], alone(root / "bag", texts)[~refused], rtol=1e-4, atol=1e-5)
    for result, blocked in zip(results, refused):  # without a label, a refused original has nothing to flip
        if blocked:
            assert (result.success, result.queries, result.edits) == (False, 1, 0)
