"""Detector maths on small tensors, feature exposure, and one backend call per batch."""

import math

import numpy as np
import onnx
import pytest
import torch
from sklearn.covariance import ledoit_wolf

from guard.backends.onnx_graph import expose_features, find_feature_tensor
from guard.detection.detectors import FitData, Outputs, build_detectors
from guard.detection.detectors.confidence import ConfidenceMarginDetector
from guard.detection.detectors.mahalanobis import MahalanobisDetector
from guard.detection.detectors.squeezing import BitDepthDetector, MedianDetector
from guard.detection.detectors.strip import StripDetector
from guard.detection.pipeline import GuardPipeline
from guard.detection.verdicts import verdicts
from guard.protocol.errors import ConfigError
from tests.conftest import DEMO_REPOSITORY
from tests.detection.helpers import StubBackend


def outputs(logits, features=None):
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return Outputs(logits, torch.softmax(logits, -1), None if features is None else torch.as_tensor(features))


def test_squeeze_score_is_l1_between_softmaxes():
    original, squeezed = outputs([[2.0, 0.0, 0.0]]), outputs([[[0.0, 2.0, 0.0]]])
    p, q = torch.softmax(torch.tensor([2.0, 0, 0]), 0), torch.softmax(torch.tensor([0, 2.0, 0]), 0)
    score = BitDepthDetector("b", 1.0, bits=1).score(original, squeezed)
    assert score.shape == (1,) and torch.isclose(score[0], (p - q).abs().sum())


def test_mahalanobis_fit_and_score_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [5.0, 5.0]])
    y = np.repeat([0, 1], 200)
    features = means[y] + rng.normal(size=(400, 2)) * [1.0, 0.5]
    logits = np.eye(2)[y] * 5
    detector = MahalanobisDetector("m", None, tmp_path, statistics="m.npz")
    detector.fit(FitData(np.zeros((400, 1)), y, logits, features))
    detector.save(tmp_path)
    reloaded = MahalanobisDetector("m", 1.0, tmp_path, statistics="m.npz")
    point = np.array([[1.0, 1.0]])
    score = reloaded.score(outputs([[5.0, 0.0]], point), None)
    centred = features - features[y == 0].mean(0) * (y == 0)[:, None] - features[y == 1].mean(0) * (y == 1)[:, None]
    cov, _ = ledoit_wolf(centred, assume_centered=True)  # the shrinkage estimator is scikit-learn's
    diff = point[0] - features[y == 0].mean(0)
    assert score.item() == pytest.approx(math.sqrt(diff @ np.linalg.inv(cov) @ diff), rel=1e-4)
    far = reloaded.score(outputs([[5.0, 0.0]], [[5.0, 5.0]]), None)  # class-1 features, predicted 0
    assert far.item() > 4 * score.item()


def test_strip_entropy_deficit():
    detector = StripDetector("s", 1.0, n=2, references="r.npy", seed=0)
    detector.images = torch.zeros(2, 1, 2, 2)
    x = torch.rand(3, 1, 2, 2)
    blends = detector.variants(x)
    assert blends.shape == (6, 1, 2, 2)
    assert torch.equal(blends[:3], x) and torch.equal(blends[3:], x)
    uniform, certain = torch.zeros(2, 1, 4), torch.tensor([[[20.0, 0, 0, 0]]] * 2)
    assert detector.score(None, outputs(uniform)).item() == pytest.approx(0.0, abs=1e-5)
    assert detector.score(None, outputs(certain)).item() == pytest.approx(2.0, abs=1e-3)  # log2(4) - ~0


def test_strip_fit_picks_n_seeded_references():
    x = np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1)
    a, b = (StripDetector("s", None, n=5, references="r.npy", seed=3) for _ in range(2))
    for d in (a, b):
        d.fit(FitData(x, None, np.zeros((20, 2)), None))
    assert torch.equal(a.images, b.images) and len(set(a.images.flatten().tolist())) == 5


def test_feature_tensor_is_the_heads_input(tmp_path):
    for model in ("digits", "digits_fp32"):
        path = DEMO_REPOSITORY / model / "model.onnx"
        name = expose_features(path, tmp_path / f"{model}.onnx")
        graph = onnx.load(str(tmp_path / f"{model}.onnx")).graph
        assert name == find_feature_tensor(onnx.load(str(path)))
        assert name in [o.name for o in graph.output]
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp_path / f"{model}.onnx"), providers=["CPUExecutionProvider"])
        feats = session.run([name], {"input": np.zeros((3, 1, 16, 16), np.float32)})[0]
        assert feats.shape == (3, 64)


class CountingBackend(StubBackend):
    """Logits and features are slices of each row's pixels, so which rows a call held shows in its outputs."""

    def __init__(self):
        self.calls = []

    def infer(self, inputs, outputs, deadline=None):
        x = inputs["input"]
        self.calls.append(x.shape[0])
        logits = x.reshape(len(x), -1)[:, :3].astype(np.float32)
        return {"logits": logits, "features": x.reshape(len(x), -1)[:, :4].copy()}


def test_one_backend_call_per_batch_over_every_variant():
    backend = CountingBackend()
    detectors = [
        BitDepthDetector("b", 0.5, bits=2),
        MedianDetector("m", 0.5, size=2),
        StripDetector("s", 0.5, n=3, references="r.npy", seed=0),
    ]
    detectors[2].images = torch.rand(3, 1, 4, 4)
    pipeline = GuardPipeline(
        backend,
        detectors,
        guarded_input="input",
        logits_output="logits",
        output_names=["logits"],
        device=torch.device("cpu"),
        features_output="features",
    )
    x = np.random.default_rng(0).random((5, 1, 4, 4), dtype=np.float32)
    result = pipeline.run({"input": x})
    assert backend.calls == [5 * (1 + 1 + 1 + 3)]
    np.testing.assert_array_equal(result.outputs["logits"], x.reshape(5, -1)[:, :3])  # the original's slice
    assert {k: v.shape for k, v in result.scores.items()} == {"b": (5,), "m": (5,), "s": (5,)}
    spans = [slice(0, 2), slice(2, 5)]
    judged = verdicts(detectors, result.scores, spans)
    for span, got in zip(spans, judged):  # each request: the union over its rows, as the scores say
        fired = tuple(d.name for d in detectors if (result.scores[d.name][span] >= d.threshold).any())
        assert got.flagged_by == fired
        assert got.verdict == ("trigger" if "s" in fired else "adversarial" if fired else "clean")
        assert got.score == max(result.scores[d.name][span].max() / d.threshold for d in detectors)


def test_trigger_detector_sets_the_trigger_verdict():
    detectors = [BitDepthDetector("b", 1.0, bits=2), StripDetector("s", 1.0, n=1, references="r.npy", seed=0)]
    both = verdicts(detectors, {"b": np.array([2.0]), "s": np.array([2.0])}, [slice(0, 1)])[0]
    assert both.verdict == "trigger" and both.flagged_by == ("b", "s") and both.score == 2.0
    adv = verdicts(detectors, {"b": np.array([2.0]), "s": np.array([0.5])}, [slice(0, 1)])[0]
    assert adv.verdict == "adversarial" and adv.flagged_by == ("b",)


def test_a_two_row_request_is_judged_by_its_worse_row_whichever_comes_first():
    detectors = [BitDepthDetector("b", 1.0, bits=2)]
    scores = {"b": np.array([0.5, 2.0, 2.0, 0.5])}
    second_worse, first_worse = verdicts(detectors, scores, [slice(0, 2), slice(2, 4)])
    for judged in (second_worse, first_worse):
        assert judged.verdict == "adversarial" and judged.score == 2.0 and judged.flagged_by == ("b",)
        assert judged.scores == {"b": 2.0}


def test_a_model_without_detectors_answers_clean_with_score_zero():
    assert [(v.verdict, v.score, v.flagged_by) for v in verdicts([], {}, [slice(0, 1), slice(1, 3)])] == [
        ("clean", 0.0, ()),
        ("clean", 0.0, ()),
    ]


def test_confidence_margin_is_one_minus_the_top_two_gap():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.1, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    score = ConfidenceMarginDetector("c", 0.5).score(Outputs(probabilities.log(), probabilities), None)
    torch.testing.assert_close(score, torch.tensor([0.5, 0.9, 1.0]))


def test_monitor_detectors_are_reported_but_never_flag():
    detectors = [BitDepthDetector("b", 1.0, bits=2), MedianDetector("m", 1.0, monitor=True, size=2)]
    judged = verdicts(detectors, {"b": np.array([0.5]), "m": np.array([9.0])}, [slice(0, 1)])[0]
    assert judged.verdict == "clean" and judged.flagged_by == () and judged.score == 0.5
    assert judged.scores == {"b": 0.5, "m": 9.0}  # still explained and exported


def test_monitor_key_is_validated_and_round_trips(tmp_path):
    path = tmp_path / "config.toml"
    table = {"name": "m", "type": "squeeze_median", "size": 2, "threshold": 1.0, "monitor": True}
    (built,) = [d for d in build_detectors(path, [table, {**table, "name": "b", "monitor": False}]) if d.monitor]
    assert built.to_config()["monitor"] is True
    with pytest.raises(ConfigError, match="monitor"):
        build_detectors(path, [{**table, "monitor": "yes"}])
    with pytest.raises(ConfigError, match="not a monitor"):
        build_detectors(path, [table])
