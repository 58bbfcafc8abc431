"""robust_density (RDE): the served kernel PCA is scikit-learn's transform, the score is the
MinCovDet distance of scikit-learn's own fit, rows far from the clean data outscore held-out clean
rows, the statistics file round-trips, bad parameters are config errors, and a calibrated model
serves it through a live gateway.

The features are real: the demo digits model's penultimate layer on the demo splits."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as triton
from sklearn.covariance import MinCovDet
from sklearn.decomposition import KernelPCA
from sklearn.metrics import roc_auc_score

from guard.backends.onnx_graph import expose_features
from guard.detection.detectors import FitData, Outputs, build_detectors
from guard.detection.detectors.robust_density import KernelProjection, RobustDensityDetector, fit_projection
from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config
from guard.tools.calibrate import calibrate_model
from tests.conftest import DEMO_REPOSITORY, demo_split, running_gateway
from tests.serving.helpers import noise_rows, raw_scores

MODEL = DEMO_REPOSITORY / "digits_fp32" / "model.onnx"


class Rows:
    """A model's outputs for some inputs: logits [N, 10], features [N, 64] (float32), labels or None."""

    def __init__(self, logits: np.ndarray, features: np.ndarray, labels: np.ndarray | None = None):
        self.logits, self.features, self.labels = logits, features, labels

    def take(self, index) -> Rows:
        return Rows(self.logits[index], self.features[index], None if self.labels is None else self.labels[index])

    def fit_data(self) -> FitData:
        return FitData(np.zeros((len(self.features), 1)), self.labels, self.logits, self.features)

    def outputs(self) -> Outputs:
        logits = torch.from_numpy(self.logits)
        return Outputs(logits, torch.softmax(logits, -1), torch.from_numpy(self.features))


def run_model(path, features_name: str, x: np.ndarray, labels: np.ndarray | None = None) -> Rows:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, features = session.run(["logits", features_name], {"input": np.asarray(x, np.float32)})
    return Rows(logits, features, labels)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Clean train and calibration rows (fit), held-out clean test rows, and uniform noise images."""
    path = tmp_path_factory.mktemp("rde") / "model.onnx"
    name = expose_features(MODEL, path)
    return {
        "train": run_model(path, name, *demo_split("train")),
        "calibration": run_model(path, name, *demo_split("calibration")),
        "test": run_model(path, name, *demo_split("test")),
        "noise": run_model(path, name, noise_rows(200)),
    }


def fitted(rows: Rows, **params) -> RobustDensityDetector:
    detector = RobustDensityDetector("rde", None, **{"n_components": 20, **params})
    detector.fit(rows.fit_data())
    return detector


def scores(detector: RobustDensityDetector, rows: Rows) -> np.ndarray:
    return detector.score(rows.outputs(), None).numpy()


def test_the_served_projection_is_kernel_pcas_transform(digits):
    kpca = fit_projection(digits["train"].features[:400].astype(np.float64), 30)
    served = KernelProjection.of(kpca)(torch.from_numpy(digits["test"].features))  # float32 in, as served
    expected = kpca.transform(digits["test"].features.astype(np.float64))
    assert served.shape == expected.shape == (360, 30)
    np.testing.assert_allclose(served.numpy(), expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_the_score_is_the_minimum_covariance_determinant_distance_of_scikit_learns_fit(digits):
    calibration, test = digits["calibration"], digits["test"]
    keep = np.flatnonzero(calibration.labels != 9)  # no clean row of class 9: its mean is everyone's
    fit = calibration.take(keep)
    assert (fit.labels != fit.logits.argmax(1)).any()  # the means are the labels' classes, not the predicted
    detector = fitted(fit, max_basis=300, support_fraction=0.8)
    projection, _ = detector.fitted
    basis = projection.basis.numpy()
    assert basis.shape == (300, 64) and len(np.unique(basis, axis=0)) == 300
    assert (basis[:, None] == fit.features.astype(np.float64)[None]).all(-1).any(1).all()  # fit rows only

    features = fit.features.astype(np.float64)
    kpca = KernelPCA(20, kernel="rbf", gamma=1 / (64 * basis.var()), remove_zero_eig=True).fit(basis)
    reduced = kpca.transform(features)
    means = np.tile(reduced.mean(0), (10, 1))
    for c in range(9):
        means[c] = reduced[fit.labels == c].mean(0)
    mcd = MinCovDet(assume_centered=True, support_fraction=0.8, random_state=0).fit(reduced - means[fit.labels])
    predicted = test.logits.argmax(1)
    assert (predicted == 9).sum() >= 10
    expected = np.sqrt(mcd.mahalanobis(kpca.transform(test.features.astype(np.float64)) - means[predicted]))
    np.testing.assert_allclose(scores(detector, test), expected, rtol=1e-5)


def far_rows(digits, kind: str) -> Rows:
    if kind == "noise images":
        return digits["noise"]
    test = digits["test"]  # held-out rows with every feature tripled: the same classes, far away
    return Rows(test.logits, test.features * 3)


@pytest.mark.parametrize("kind", ["noise images", "tripled features"])
def test_rows_far_from_the_clean_data_outscore_held_out_clean_rows(digits, kind):
    detector = fitted(digits["train"].take(slice(500)))
    clean, far = scores(detector, digits["test"]), scores(detector, far_rows(digits, kind))
    auroc = roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(far))], np.r_[clean, far])
    # Scores that ignore which rows are far give an AUROC of 0.5 with standard deviation
    # sqrt((n1 + n2 + 1) / (12 n1 n2)) (Mann-Whitney); five of them leave chance below 1e-6.
    n1, n2 = len(clean), len(far)
    assert auroc > 0.5 + 5 * math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def test_the_statistics_file_round_trips_to_identical_scores(digits, tmp_path):
    train = digits["train"]
    detector = fitted(Rows(train.logits[:300], train.features[:300]), statistics="r.npz")  # no labels: predicted
    detector.save(tmp_path)
    table = {"name": "rde", "type": "robust_density", "statistics": "r.npz", "n_components": 20, "threshold": 1.0}
    (reloaded,) = build_detectors(tmp_path / "config.toml", [table])
    assert reloaded.to_config() == {**detector.to_config(), "threshold": 1.0}
    reloaded.to(torch.device("cpu"))
    np.testing.assert_array_equal(scores(reloaded, digits["test"]), scores(detector, digits["test"]))


def test_the_basis_is_a_bounded_seeded_sample_and_components_fit_the_rows(digits):
    train = digits["train"]
    rows = train.take(slice(300))
    first, second = fitted(rows, max_basis=100), fitted(rows, max_basis=100)
    assert first.fitted[0].basis.shape == (100, 64)
    assert torch.equal(first.fitted[0].basis, second.fitted[0].basis)
    few = train.take(slice(40))
    clipped = fitted(few, n_components=100)  # 40 rows of 10 classes, centred twice: 29 dimensions
    assert clipped.fitted[0].weights.shape[1] == 29
    with warnings.catch_warnings():
        # 19 dimensions are all 20 rows can span: each FastMCD subset is a simplex whose own
        # distances are all equal, and scikit-learn warns that its determinants stop decreasing.
        warnings.simplefilter("ignore", RuntimeWarning)
        assert fitted(few, n_components=100, support_fraction=0.5).fitted[0].weights.shape[1] == 19
    assert fitted(rows, n_components=100, max_basis=10).fitted[0].weights.shape[1] == 9  # a 10-row basis
    assert np.isfinite(scores(clipped, digits["test"])).all()
    with pytest.raises(ValueError, match="rde: 1 clean rows are too few"):
        fitted(train.take(slice(1)))


@pytest.mark.parametrize("input_kind", ["image", "tensor", "text"])
def test_it_examines_the_inputs_mahalanobis_does(tmp_path, input_kind):
    table = {"name": "rde", "type": "robust_density"}
    (built,) = build_detectors(tmp_path / "config.toml", [table], require_threshold=False, input_kind=input_kind)
    assert isinstance(built, RobustDensityDetector) and built.needs_features


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n_components", 0),
        ("n_components", 2.5),
        ("support_fraction", 0.4),
        ("support_fraction", 1.5),
        ("max_basis", 1),
        ("max_basis", True),
        ("statistics", "missing.npz"),  # serving needs the fitted file
    ],
)
def test_bad_parameters_are_config_errors_naming_them(tmp_path, key, value):
    table = {"name": "rde", "type": "robust_density", "threshold": 1.0, key: value}
    with pytest.raises(ConfigError, match=rf"key 'detectors\[0\]\.{key}'"):
        build_detectors(tmp_path / "config.toml", [table], require_threshold=key == "statistics")


def test_a_calibrated_model_serves_it_through_a_live_gateway(tmp_path):
    x, y = (np.array(a[:240]) for a in demo_split("calibration"))
    fit_x, fit_y = (np.array(a[:300]) for a in demo_split("train"))
    detectors = [{"name": "rde", "type": "robust_density", "n_components": 20}]
    report = calibrate_model(MODEL, "m", tmp_path, x, y, detectors=detectors, fit_data=(fit_x, fit_y))
    directory = tmp_path / "m"
    config = load_model_config(directory)
    (table,) = config.detection.detectors
    assert table["type"] == "robust_density" and (directory / table["statistics"]).is_file()
    assert report["thresholds"]["rde"] == table["threshold"] > 0

    inputs = np.concatenate([demo_split("test")[0][:3], noise_rows(2)])
    with running_gateway(tmp_path) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        served = [row["rde"] for row in raw_scores(client, inputs, model="m")]
    (detector,) = build_detectors(directory / "config.toml", [table])
    rows = [run_model(directory / "model.onnx", config.detection.features_output, inputs[i : i + 1]) for i in range(5)]
    np.testing.assert_allclose(served, [scores(detector, r)[0] for r in rows], rtol=1e-5)
