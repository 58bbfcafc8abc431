"""The shipped INT8 model: accuracy gate against FP32, QDQ format, thresholds calibrated on it."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from guard.serving.model_config import load_model_config
from guard.tools.calibrate import calibrate_model
from models.digits_data import load_split
from models.digits_guard import ENSEMBLE, demo_detectors
from models.quantize import ACCURACY_GATE, calibration_images, compare, convert_fp16, logits, quantize_int8

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
INT8, FP32 = REPOSITORY / "digits" / "model.onnx", REPOSITORY / "digits_fp32" / "model.onnx"


def test_shipped_int8_meets_the_accuracy_gate():
    x, y = load_split("test")
    fp32 = float((logits(FP32, x).argmax(1) == y).mean())
    int8 = float((logits(INT8, x).argmax(1) == y).mean())
    assert int8 >= fp32 - ACCURACY_GATE, (int8, fp32)
    assert int8 >= 0.97


def test_shipped_int8_is_qdq_with_a_dynamic_batch_axis():
    model = onnx.load(str(INT8))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x, _ = load_split("test")
    for batch in (1, 7):
        assert logits(INT8, x[:batch]).shape == (batch, 10)


def test_shipped_thresholds_were_calibrated_on_the_int8_model(tmp_path):
    config = load_model_config(REPOSITORY / "digits")
    shipped = {d["name"]: d["threshold"] for d in config.detection.detectors}
    x, y = load_split("calibration")
    import shutil

    (tmp_path / "digits").mkdir()
    shutil.copy(REPOSITORY / "digits" / "detector_net.npz", tmp_path / "digits")  # trained offline
    report = calibrate_model(INT8, "digits", tmp_path, x, y, holdout=load_split("test"),
                             detectors=demo_detectors(REPOSITORY / "digits"), fit_data=load_split("train"),
                             ensemble=ENSEMBLE)
    assert report["thresholds"] == pytest.approx(shipped, rel=1e-9)
    assert report["ensemble"]["threshold"] == pytest.approx(config.ensemble.threshold, rel=1e-9)
    assert report["ensemble"].get("min_p_threshold") == pytest.approx(config.ensemble.min_p_threshold, rel=1e-9)


def test_quick_quantization_passes_the_gate(tmp_path):
    out = quantize_int8(FP32, tmp_path / "int8.onnx", calibration_images(64))
    report = compare(FP32, out)
    assert report["accuracy"] >= report["fp32_accuracy"] - ACCURACY_GATE
    assert report["disagreement"] <= 0.03
    assert set(report["noise"]) == {"0.02", "0.05", "0.1"}


def test_fp16_variant_keeps_fp32_io_and_predictions(tmp_path):
    out = convert_fp16(FP32, tmp_path / "fp16.onnx")
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x, _ = load_split("test")
    np.testing.assert_allclose(logits(out, x[:32]), logits(FP32, x[:32]), atol=0.05)
