"""A model that takes ONNX strings itself (a TF-IDF pipeline as skl2onnx exports one) served behind
the text detectors: the `strings` preprocessor decodes clients' BYTES rows, the detectors' variants
(a misspelling repaired, a word deleted) are edits of the words, and the originals and every
variant reach the model as str in one backend call. Malformed rows are refused per request."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from guard.detection.preprocess import REGISTRY
from guard.detection.texts import TextRows
from guard.protocol.errors import ConfigError
from guard.protocol.spec import TensorSpec
from guard.serving.model_config import load_model_config
from tests.conftest import running_gateway, set_key

MAX_CHARS = 64
WEIGHTS = {"good": 3.0, "great": 3.0, "bad": -3.0, "awful": -3.0, "cf": 8.0}
"""Each word's pull towards class 1 (positive); "cf" is a backdoor-like trigger that outweighs all."""
SOURCE = TensorSpec("text", "BYTES", (1,))

CONFIG = f"""
name = "words"
platform = "onnxruntime_onnx"
policy = "flag"

[[inputs]]
name = "text"
datatype = "BYTES"
shape = [1]

[[outputs]]
name = "logits"
datatype = "FP32"
shape = [2]

[preprocess]
kind = "strings"
input = "text"
output = "text"
max_chars = {MAX_CHARS}

[batching]
max_batch_size = 16
max_queue_delay_microseconds = 50000

[[detectors]]
name = "spelling"
type = "spelling"
threshold = 0.5

[[detectors]]
name = "word_deletion"
type = "word_deletion"
threshold = 0.5
"""


def bag_of_words_model() -> onnx.ModelProto:
    """text STRING [N, 1] -> lower-cased (locale C), split into runs of letters, counted over
    WEIGHTS' words (TfIdfVectorizer, TF) -> logits [N, 2] = counts @ [-w/2, w/2]."""
    words = list(WEIGHTS)
    weights = np.array([[-w / 2, w / 2] for w in WEIGHTS.values()], dtype=np.float32)
    nodes = [
        helper.make_node("Reshape", ["text", "flat_shape"], ["flat"]),
        helper.make_node("StringNormalizer", ["flat"], ["lower"], case_change_action="LOWER", locale="C"),
        helper.make_node(
            "Tokenizer",
            ["lower"],
            ["tokens"],
            domain="com.microsoft",
            mark=0,
            mincharnum=1,
            pad_value="#",
            tokenexp="[a-z]+",
        ),
        helper.make_node(
            "TfIdfVectorizer",
            ["tokens"],
            ["counts"],
            mode="TF",
            min_gram_length=1,
            max_gram_length=1,
            max_skip_count=0,
            ngram_counts=[0],
            ngram_indexes=list(range(len(words))),
            pool_strings=words,
        ),
        helper.make_node("MatMul", ["counts", "weights"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "words",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
        initializer=[
            helper.make_tensor("flat_shape", TensorProto.INT64, [1], [-1]),
            helper.make_tensor("weights", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist()),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("strings-repository")
    (root / "words").mkdir()
    onnx.save(bag_of_words_model(), root / "words" / "model.onnx")
    (root / "words" / "config.toml").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def client(repository):
    with running_gateway(repository) as srv:
        yield grpcclient.InferenceServerClient(srv.grpc_url)


def request(texts: list[bytes]) -> grpcclient.InferInput:
    one = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    one.set_data_from_numpy(np.array([[t] for t in texts], dtype=object))
    return one


def explain(client, text: str) -> dict:
    result = client.infer("words", [request([text.encode()])], parameters={"guard_explain": True})
    answer = {k: v.string_param or v.double_param for k, v in result.get_response().parameters.items()}
    return {
        "logits": result.as_numpy("logits")[0],
        "verdict": answer["guard_verdict"],
        "scores": json.loads(answer["guard_detector_scores"]),
        "suspects": json.loads(answer.get("guard_suspects", "{}")),
    }


def direct_logits(repository, texts: list[str]) -> np.ndarray:
    session = ort.InferenceSession(str(repository / "words" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"text": np.array([[t] for t in texts], dtype=object)})[0]


def test_the_originals_are_answered_as_the_model_answers_them(client, repository):
    texts = ["A good film.", "an awful, bad film", "Great", "nothing the model knows"]
    served = client.infer("words", [request([t.encode() for t in texts])]).as_numpy("logits")
    np.testing.assert_allclose(served, direct_logits(repository, texts), atol=1e-6)
    assert np.abs(served).max() > 1  # the words reached the model as text, not as empty strings


def test_a_trigger_words_deletion_variant_is_scored_and_named(client):
    clean = explain(client, "a bad film")
    triggered = explain(client, "a bad film cf")
    assert triggered["logits"].argmax() == 1 and clean["logits"].argmax() == 0
    # Deleting "cf" takes p(positive) from sigmoid(5) to sigmoid(-3): a drop of 0.95.
    assert triggered["scores"]["word_deletion"] == pytest.approx(0.946, abs=0.01)
    assert triggered["suspects"]["word_deletion"] == [["cf"]]
    assert triggered["verdict"] != "clean"
    assert clean["scores"]["word_deletion"] < 0.5


def test_a_misspellings_repair_variant_is_scored(client):
    # "awfull" is unknown to the model (logits 0); its repair "awful" is not: L1 between the two answers.
    misspelt = explain(client, "an awfull film")
    assert misspelt["scores"]["spelling"] == pytest.approx(2 * (1 / (1 + np.exp(-3)) - 0.5), abs=0.01)
    assert misspelt["suspects"]["spelling"] == [["awfull"]]
    assert explain(client, "an awful film")["scores"]["spelling"] == 0.0


@pytest.mark.parametrize(
    "body, why",
    [
        (b"\xff\xfegood", "not UTF-8 (byte 0"),
        ("caf\u00e9".encode("latin-1"), "not UTF-8 (byte 3"),
        (b"", "an empty text"),
        (b" \n\t ", "an empty text"),
        (b"x" * (MAX_CHARS + 1), f"{MAX_CHARS + 1} characters, over the model's limit of {MAX_CHARS}"),
        ("é".encode() * (MAX_CHARS + 1), f"{MAX_CHARS + 1} characters"),  # characters, not bytes
    ],
)
def test_a_malformed_text_is_refused_naming_input_and_row(client, body, why):
    with pytest.raises(InferenceServerException) as info:
        client.infer("words", [request([b"a fine first row", body])])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'text' row 1: " in info.value.message()
    assert why in info.value.message()


def test_exactly_the_character_limit_is_served(client):
    assert client.infer("words", [request(["é".encode() * MAX_CHARS])]).as_numpy("logits").shape == (1, 2)


def test_a_bad_request_fails_alone_among_requests_batched_with_it(client, repository):
    bodies = [[b"good"], [b"\xc3"], [b"an awful film"], [b""], [b"great great"]]
    with ThreadPoolExecutor(len(bodies)) as pool:  # inside one 50 ms batching window
        futures = [pool.submit(client.infer, "words", [request(b)]) for b in bodies]
        outcomes = [f.exception() or f.result().as_numpy("logits")[0] for f in futures]
    for i in (1, 3):
        assert isinstance(outcomes[i], InferenceServerException)
        assert outcomes[i].status() == "StatusCode.INVALID_ARGUMENT"
    served = np.stack([outcomes[i] for i in (0, 2, 4)])
    np.testing.assert_allclose(served, direct_logits(repository, ["good", "an awful film", "great great"]), atol=1e-6)


def test_rows_decode_to_text_and_finish_as_one_string_array():
    pre = REGISTRY["strings"](SOURCE, "text", max_chars=MAX_CHARS)
    good = np.array([[b"one"], ["tw\u00f6 rows".encode()]], dtype=object)
    prepared = pre.prepare(
        [good, np.array([[b"\xc3"]], dtype=object), np.array([[b"three"]], dtype=object)], torch.device("cpu")
    )
    assert prepared.rows == TextRows(("one", "tw\u00f6 rows", "three"))
    assert list(prepared.failed) == [1]
    feeds = pre.finish_inputs(TextRows(("one", "two", "three")))
    assert feeds["text"].dtype == object and feeds["text"].shape == (3, 1)
    assert feeds["text"][:, 0].tolist() == ["one", "two", "three"]
    flat = REGISTRY["strings"](TensorSpec("text", "BYTES", ()), "text")
    assert flat.finish_inputs(TextRows(("one", "two")))["text"].shape == (2,)
    assert pre.bucket(good) is None  # nothing is padded: any lengths share a batch


def test_config_errors_name_the_key(tmp_path, repository):
    directory = tmp_path / "words"
    directory.mkdir()
    (directory / "model.onnx").write_bytes((repository / "words" / "model.onnx").read_bytes())
    (directory / "config.toml").write_text(set_key(CONFIG, "max_chars", "0"))
    with pytest.raises(ConfigError, match="max_chars"):
        load_model_config(directory)
    (directory / "config.toml").write_text(set_key(CONFIG, "shape", "[2]"))
    with pytest.raises(ConfigError, match="one string per row"):
        load_model_config(directory)


def test_query_attack_fingerprints_read_the_strings_as_a_tokenized_model_reads_them():
    """Both text kinds hand the query-attack check the same symbols for the same texts."""
    from guard.detection.texts import symbol_rows

    rows = TextRows.of(["A gem of a film, truly.", "Dull"])
    strings = REGISTRY["strings"](TensorSpec("text", "BYTES", (1,)), "text")
    np.testing.assert_array_equal(strings.query_rows(rows), symbol_rows(rows.texts))
