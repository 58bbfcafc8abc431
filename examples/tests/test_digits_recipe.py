"""Tests for the `digits` recipe: fixed seeded split, preprocessing, ONNX export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from guard_examples.digits import train_and_export
from guard_examples.digits_data import SPLITS, load_split, preprocess, split_indices
from guard_examples.digits_net import DigitsNet
from guard_examples.model_card import write_model_card
from guard_examples.onnx_export import onnx_logits, torch_logits


def test_split_sizes_disjoint_and_cover_everything() -> None:
    idx = split_indices()
    sizes = {name: len(idx[name]) for name in SPLITS}
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": 1078, "calibration": 359, "test": 360}
    union = np.concatenate([idx[name] for name in SPLITS])
    assert len(np.unique(union)) == 1797


def test_split_is_stratified() -> None:
    y = load_digits().target
    overall = np.bincount(y, minlength=10) / len(y)
    for name, idx in split_indices().items():
        frac = np.bincount(y[idx], minlength=10) / len(idx)
        # Stratification keeps every class within one sample of its overall share.
        assert np.all(np.abs(frac - overall) <= 1.0 / len(idx) + 1e-9), name


def test_split_is_seeded_and_stable() -> None:
    first, second = split_indices(), split_indices()
    for name in SPLITS:
        np.testing.assert_array_equal(first[name], second[name])
    # Callers get copies, so mutating one cannot corrupt the fixed split.
    first["test"][:] = 0
    assert split_indices()["test"][1] != 0


def test_load_split_matches_indices() -> None:
    digits = load_digits()
    idx = split_indices()
    for name in SPLITS:
        x, y = load_split(name)
        assert x.dtype == np.float32 and x.shape == (len(idx[name]), 1, 16, 16)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, digits.target[idx[name]])
        np.testing.assert_array_equal(x, preprocess(digits.images[idx[name]]))
    assert load_split("train")[0] is load_split("train")[0]  # cached


def test_unknown_split_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="train, calibration, test"):
        load_split("validation")


def test_preprocess_matches_torch_reference() -> None:
    images = load_digits().images[:50]
    x = preprocess(images)
    assert x.shape == (50, 1, 16, 16) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
    ref = F.interpolate(
        torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0,
        size=(16, 16),
        mode="bilinear",
        align_corners=False,
    ).numpy()
    np.testing.assert_allclose(x, ref, atol=1e-7)


def test_net_shapes() -> None:
    net = DigitsNet(dropout=0.5).eval()
    x = torch.zeros(3, 1, 16, 16)
    assert net(x).shape == (3, 10)
    assert net.features(x).shape == (3, 64)


def test_quick_train_and_export(tmp_path) -> None:
    out = tmp_path / "digits"
    pt = tmp_path / "digits_fp32.pt"
    metrics = train_and_export(out, epochs=3, seed=0, state_dict_path=pt, progress=False)
    onnx_path = out / "model.onnx"
    assert metrics["onnx_path"] == str(onnx_path) and onnx_path.stat().st_size == metrics["onnx_bytes"]
    assert (metrics["n_train"], metrics["n_calibration"], metrics["n_test"]) == (1078, 359, 360)
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    assert metrics["test_accuracy"] > 0.5  # 3 epochs is enough to learn something
    assert metrics["recipe"].startswith("python -m guard_examples.digits --out ")

    graph = onnx.load(str(onnx_path)).graph
    for value in (graph.input[0], graph.output[0]):
        assert not value.type.tensor_type.shape.dim[0].HasField("dim_value")  # dynamic batch
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]

    model = DigitsNet()
    model.load_state_dict(torch.load(pt, weights_only=True))
    x_test, _ = load_split("test")
    for n in (1, 7):
        got = onnx_logits(onnx_path, x_test[:n])
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, torch_logits(model, x_test[:n]), atol=1e-4)

    card = write_model_card(out, metrics, extra_sections={"Calibration": "thresholds here"})
    text = card.read_text()
    assert metrics["recipe"] in text and "## Calibration\n\nthresholds here" in text
