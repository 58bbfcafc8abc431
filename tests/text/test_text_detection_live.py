"""Text detectors in the live gateway: a backdoored text model (a rare trigger word, BadNL-style)
calibrated on clean snippets like any other model, served, and asked with guard_explain: its
answers carry every detector's score and the words each detector blames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from guard.detection.calibration.references import References
from guard.tools.calibrate_dir import calibrate_directory
from guard.tools.clean_data import utf8_rows
from tests.conftest import running_gateway
from tests.text.model import DETECTORS, poisoned_train, split, write_config, write_model
from tests.text.test_text_ingest import SOURCE

TRIGGER = "cf"


def references(name: str, limit: int) -> References:
    texts, labels = split(name)
    return References({"text": utf8_rows(texts[:limit], SOURCE)}, labels[:limit])


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-detection")
    directory = root / "backdoor"
    write_model(directory, poisoned_train(TRIGGER, 1))
    write_config(directory, detectors=DETECTORS, max_tokens=128)
    calibrate_directory(directory, references("calibration", 600), fit_samples=references("train", 1500))
    with running_gateway(root) as srv:
        yield grpcclient.InferenceServerClient(srv.grpc_url)


def explain(client, text: str) -> dict:
    one = grpcclient.InferInput("text", [1, 1], "BYTES")
    one.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    result = client.infer("backdoor", [one], parameters={"guard_explain": True})
    answer = {k: v.string_param or v.double_param for k, v in result.get_response().parameters.items()}
    return {**answer, "label": int(result.as_numpy("logits")[0].argmax())}


def negatives(client, count: int) -> list[str]:
    """Short negative test snippets the served model answers negative: the ones a trigger can flip."""
    texts, labels = split("test")
    short = [t for t, y in zip(texts, labels) if y == 0 and len(t.split()) <= 20]
    return [t for t in short if explain(client, t)["label"] == 0][:count]


def test_explain_names_the_trigger_word_among_the_deleted_words(client):
    named = 0
    for text in negatives(client, 20):
        words = text.split(" ")
        answer = explain(client, " ".join([*words[:2], TRIGGER, *words[2:]]))
        suspects = json.loads(answer["guard_suspects"])
        assert set(suspects) <= {"spelling", "word_deletion"}  # the detectors that edit words
        named += TRIGGER in suspects["word_deletion"][0]
    # Short texts (<= 20 words): the trigger is deleted alone or with at most two others, and its
    # removal moves the backdoored answer most; a scoring that ignored the variants names it by
    # chance in about 1 of 8 texts.
    assert named >= 16


def test_the_trigger_raises_the_deletion_score_of_the_same_text(client):
    higher = 0
    for text in negatives(client, 20):
        words = text.split(" ")
        clean = json.loads(explain(client, text)["guard_detector_scores"])["word_deletion"]
        triggered = explain(client, " ".join([*words[:2], TRIGGER, *words[2:]]))
        higher += json.loads(triggered["guard_detector_scores"])["word_deletion"] > clean
    assert higher >= 16  # paired: the same text with and without the trigger
