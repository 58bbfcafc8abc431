"""The learned detector network: its maths, loading from config, and calibration on the demo model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom

from guard.detection.detectors import Outputs, build_detectors
from guard.detection.detectors.network import DetectorNetwork
from guard.protocol.errors import ConfigError
from guard.tools.calibrate import calibrate_model
from guard_examples.detector_net import mlp_scores, pgd_examples, served_outputs, train_detector
from guard_examples.digits_data import load_split

DEMO_MODEL = Path(__file__).resolve().parents[1] / "guard_examples" / "repository" / "digits" / "model.onnx"


def random_params(d: int = 6, h: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "mean": rng.normal(size=d),
        "std": rng.uniform(0.5, 2.0, size=d),
        "w1": rng.normal(size=(h, d)),
        "b1": rng.normal(size=h),
        "w2": rng.normal(size=(1, h)),
        "b2": rng.normal(size=1),
    }


def test_score_matches_numpy_reference(tmp_path):
    params = random_params()
    np.savez(tmp_path / "detector_net.npz", **params)
    detector = DetectorNetwork("net", None, tmp_path, weights="detector_net.npz").to(torch.device("cpu"))
    features = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    score = detector.score(Outputs(torch.zeros(5, 10), torch.zeros(5, 10), torch.from_numpy(features)), None)
    assert score.shape == (5,)
    assert (score > 0).all()
    hidden = np.maximum(((features - params["mean"]) / params["std"]) @ params["w1"].T + params["b1"], 0)
    reference = 1 / (1 + np.exp(-(hidden @ params["w2"].T + params["b2"])[:, 0]))
    np.testing.assert_allclose(score.numpy(), -np.log1p(-reference), rtol=1e-5, atol=1e-6)  # -log(1 - p)
    np.testing.assert_allclose(mlp_scores(params, features), reference, rtol=1e-12)  # the recipe's own copy


def test_missing_weights_fail_clearly(tmp_path):
    detector = DetectorNetwork("net", 0.5, tmp_path, weights="detector_net.npz")
    with pytest.raises(RuntimeError, match="no weights loaded"):
        detector.score(Outputs(torch.zeros(2, 10), torch.zeros(2, 10), torch.zeros(2, 6)), None)


def test_built_from_config(tmp_path):
    config = tmp_path / "config.toml"
    table = {"name": "net", "type": "detector_network", "threshold": 0.7}
    with pytest.raises(ConfigError, match="detector_net.npz"):  # threshold present, artifact absent
        build_detectors(config, [table])
    np.savez(tmp_path / "detector_net.npz", **random_params())
    (detector,) = build_detectors(config, [table])
    assert isinstance(detector, DetectorNetwork) and detector.needs_features and detector.threshold == 0.7
    assert detector.to_config() == {
        "name": "net",
        "type": "detector_network",
        "weights": "detector_net.npz",
        "threshold": 0.7,
    }
    with pytest.raises(ConfigError, match="weights"):
        build_detectors(config, [{**table, "weights": ""}])


def test_calibrates_on_the_demo_model(tmp_path):
    from guard_examples.detector_net import load_surrogate

    x, y = load_split("train")
    x, y = np.array(x[:96]), y[:96]
    x_adv, _, _ = pgd_examples(load_surrogate(), x, y, seed=0, progress=False)
    params = train_detector(
        served_outputs(DEMO_MODEL, x)[1], served_outputs(DEMO_MODEL, x_adv)[1], hidden=8, epochs=20, seed=0
    )
    (tmp_path / "digits").mkdir()
    np.savez(tmp_path / "digits" / "detector_net.npz", **params)
    x_cal, y_cal = load_split("calibration")
    report = calibrate_model(
        DEMO_MODEL, "digits", tmp_path, np.array(x_cal), y_cal, detectors=[{"name": "net", "type": "detector_network"}]
    )
    assert report["calibration_fpr"] <= 0.05
    assert report["thresholds"]["net"] > 0
    assert "features_output" in (tmp_path / "digits" / "config.toml").read_text()

    # It detects: on PGD examples of test images (never trained or calibrated on), at the calibrated
    # threshold, it flags far more often than a detector that cannot tell them from clean inputs,
    # which flags at most the target rate: more than the 1-in-a-million upper quantile of that count.
    x_test, y_test = load_split("test")
    x_test, y_test = np.array(x_test[:128]), y_test[:128]
    attacked, _, _ = pgd_examples(load_surrogate(), x_test, y_test, seed=1, progress=False)
    (detector,) = build_detectors(
        tmp_path / "digits" / "config.toml",
        [{"name": "net", "type": "detector_network", "threshold": report["thresholds"]["net"]}],
    )
    logits, features = served_outputs(DEMO_MODEL, attacked)
    scores = detector.score(
        Outputs(torch.from_numpy(logits), torch.softmax(torch.from_numpy(logits), -1), torch.from_numpy(features)), None
    )
    flagged = int((scores.numpy() >= detector.threshold).sum())
    chance = int(binom.isf(1e-6, len(attacked), 0.05))
    assert flagged > chance, f"{flagged} of {len(attacked)} flagged; chance alone reaches {chance}"
