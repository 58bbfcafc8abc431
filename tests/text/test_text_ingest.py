"""Text models served end to end: UTF-8 strings in as BYTES (tritonclient, unchanged), tokenized by
the model's own tokenizer inside the batch, padded dynamically, and every malformed text refused on
its own with INVALID_ARGUMENT naming the input and row."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from guard.detection.preprocess import TextPreprocessor
from guard.detection.texts import TextRows
from guard.protocol.errors import ConfigError
from guard.protocol.spec import TensorSpec
from guard.serving.model_config import load_model_config
from guard.tools.clean_data import load_references
from tests.conftest import running_gateway
from tests.text.model import MAX_TOKENS, encode, split, write_config, write_model

SOURCE = TensorSpec("text", "BYTES", (1,))


@pytest.fixture(scope="module")
def repository(tmp_path_factory, bag_model) -> Path:
    root = tmp_path_factory.mktemp("text-repository")
    write_model(root / "bag", bag_model)
    write_config(root / "bag")
    shutil.copytree(root / "bag", root / "bag_truncating")
    write_config(root / "bag_truncating", overflow="truncate", max_tokens=16)
    return root


@pytest.fixture(scope="module")
def client(repository):
    with running_gateway(repository) as srv:
        yield grpcclient.InferenceServerClient(srv.grpc_url)


def send(client, texts: list[bytes], model: str = "bag"):
    one = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    one.set_data_from_numpy(np.array([[t] for t in texts], dtype=object))
    return client.infer(model, [one])


def direct_logits(directory: Path, texts: list[str], max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """The ONNX model run on each text alone, unpadded: what the served answer must equal."""
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = []
    for text in texts:
        ids, mask = encode([text], max_tokens)
        rows.append(session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0][0])
    return np.stack(rows)


def test_texts_of_different_lengths_are_answered_as_if_alone(client, repository):
    texts, _ = split("test")
    chosen = sorted(texts[:40], key=len)[::8]  # five texts from short to long, padded together
    result = send(client, [t.encode() for t in chosen])
    served = result.as_numpy("logits")
    expected = direct_logits(repository / "bag", chosen)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)
    assert result.get_response().parameters["guard_verdict"].string_param == "clean"


@pytest.mark.parametrize(
    "body, why",
    [
        (b"\xff\xfegood", "not UTF-8 (byte 0"),
        ("caf\u00e9".encode("latin-1"), "not UTF-8 (byte 3"),
        (b"", "an empty text"),
        (b" \n\t ", "an empty text"),
        (("word " * (MAX_TOKENS + 5)).encode(), f"over the model's limit of {MAX_TOKENS}"),
    ],
)
def test_a_malformed_text_is_refused_naming_input_and_row(client, body, why):
    with pytest.raises(InferenceServerException) as info:
        send(client, [b"a fine first row", body])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'text' row 1: " in info.value.message()
    assert why in info.value.message()
    assert send(client, [b"still serving"]).as_numpy("logits").shape == (1, 2)


def test_exactly_the_token_limit_is_served_and_one_more_is_not(client):
    # [CLS] + words + [SEP]: each "word" is one token of this tokenizer.
    assert send(client, [("word " * (MAX_TOKENS - 2)).encode()]).as_numpy("logits").shape == (1, 2)
    with pytest.raises(InferenceServerException, match=f"{MAX_TOKENS + 1} tokens"):
        send(client, [("word " * (MAX_TOKENS - 1)).encode()])


def test_truncating_models_answer_for_the_first_tokens(client, repository):
    long = "a thoroughly dull and lifeless film " * 10
    served = send(client, [long.encode()], "bag_truncating").as_numpy("logits")
    np.testing.assert_allclose(served, direct_logits(repository / "bag", [long], max_tokens=16), rtol=1e-4, atol=1e-4)


def test_bad_requests_fail_alone_in_a_batch(repository):
    pre = TextPreprocessor(SOURCE, "input_ids", directory=repository / "bag", max_tokens=MAX_TOKENS)
    good = np.array([[b"one"], [b"two rows"]], dtype=object)
    prepared = pre.prepare(
        [good, np.array([[b"\xc3"]], dtype=object), np.array([[b"three"]], dtype=object)], torch.device("cpu")
    )
    assert prepared.rows == TextRows(("one", "two rows", "three"))
    assert list(prepared.failed) == [1]


def test_originals_and_variants_are_padded_together_with_their_masks(repository):
    pre = TextPreprocessor(SOURCE, "input_ids", directory=repository / "bag", max_tokens=MAX_TOKENS)
    feeds = pre.finish_inputs(TextRows(("short", "a much longer text than the first one is")))
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.shape == mask.shape and ids.dtype == torch.int64
    assert ids.shape[1] % 8 == 0  # padded to a multiple of 8: few distinct shapes for the backend
    assert mask[0].sum() == 3 and mask[1].sum() > 3  # [CLS] short [SEP], then padding
    assert (ids[0][mask[0] == 0] == 0).all()


def test_requests_are_bucketed_by_length():
    pre = TextPreprocessor(SOURCE, "input_ids")
    short, also_short = np.array([[b"x" * 10]], dtype=object), np.array([[b"y" * 60]], dtype=object)
    long = np.array([[b"z" * 300], [b"w"]], dtype=object)
    assert pre.bucket(short) == pre.bucket(also_short)
    assert pre.bucket(long) != pre.bucket(short)


def test_config_errors_name_the_key(tmp_path, repository):
    directory = tmp_path / "bag"
    shutil.copytree(repository / "bag", directory)
    write_config(directory, overflow="cut")
    with pytest.raises(ConfigError, match="overflow"):
        load_model_config(directory)
    write_config(directory)
    (directory / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="tokenizer.json"):
        load_model_config(directory)


def test_clean_text_loads_from_a_text_file_or_an_npz_of_str(tmp_path):
    (tmp_path / "clean.txt").write_text("first review\n\nsecond réview\n")
    loaded = load_references(tmp_path / "clean.txt", (SOURCE,))
    assert loaded.inputs["text"].tolist() == [[b"first review"], ["second réview".encode()]]
    np.savez(tmp_path / "clean.npz", x=np.array(["one", "twö"]), y=np.array([0, 1]))
    loaded = load_references(tmp_path / "clean.npz", (SOURCE,))
    assert loaded.inputs["text"].tolist() == [[b"one"], ["twö".encode()]]
    assert loaded.labels.tolist() == [0, 1]


def test_a_short_and_a_long_text_are_not_batched_together(repository):
    from guard.backends import build_backend
    from guard.serving.composition import build_pipeline

    config = load_model_config(repository / "bag")
    backend = build_backend(config.spec, config.backend)
    pipeline = build_pipeline(config, backend, [], torch.device("cpu"))
    backend.close()
    short = {"text": np.array([[b"fine"]], dtype=object)}
    also_short = {"text": np.array([[b"also fine"]], dtype=object)}
    long = {"text": np.array([[b"long " * 60]], dtype=object)}
    assert pipeline.shape_key(short) == pipeline.shape_key(also_short) != pipeline.shape_key(long)
