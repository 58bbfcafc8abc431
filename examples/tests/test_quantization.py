"""The shipped INT8 model: accuracy gate against FP32, QDQ format, thresholds calibrated on it."""

from pathlib import Path

import numpy as np
import onnx

from guard.serving.model_config import load_model_config
from guard.tools.calibrate import calibrate_model
from guard_examples.digits_data import load_split
from guard_examples.digits_guard import ENSEMBLE, demo_detectors
from guard_examples.quantize import ACCURACY_GATE, calibration_images, compare, convert_fp16, logits, quantize_int8

REPOSITORY = Path(__file__).resolve().parents[1] / "guard_examples" / "repository"
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


def test_shipped_thresholds_are_what_this_host_derives_from_the_shipped_references(tmp_path):
    """Loading the shipped model derives its thresholds from the shipped references wherever the
    runtime differs from the calibration's, and the derivation is deterministic: two loads agree
    exactly. On the host (and versions) that calibrated it, the recipe's calibration reproduces the
    shipped thresholds exactly and loading keeps them; floats from another host are never compared."""
    import shutil

    from guard.serving.metrics import GuardMetrics
    from guard.serving.runtime import ModelRuntime

    config = load_model_config(REPOSITORY / "digits")
    shipped = {d["name"]: d["threshold"] for d in config.detection.detectors}

    def load() -> tuple[dict[str, float], tuple, object]:
        runtime = ModelRuntime(config, GuardMetrics().for_model("digits"), calibration_mode="recalibrate")
        try:
            combiner = (runtime.combiner.threshold, runtime.combiner.min_p_threshold)
            return {d.name: d.threshold for d in runtime.detectors}, combiner, runtime.host_calibration
        finally:
            runtime.backend.close()

    first, second = load(), load()
    assert first[:2] == second[:2]
    host = first[2]
    if host.fingerprint != config.calibration.fingerprint:
        assert host.recalibrated == "true" and 0.0 <= host.clean_flag_rate <= config.detection.target_fpr
        return
    assert host.recalibrated == "false" and first[0] == shipped
    x, y = load_split("calibration")
    (tmp_path / "digits").mkdir()
    shutil.copy(REPOSITORY / "digits" / "detector_net.npz", tmp_path / "digits")  # trained offline
    report = calibrate_model(
        INT8,
        "digits",
        tmp_path,
        x,
        y,
        holdout=load_split("test"),
        detectors=demo_detectors(REPOSITORY / "digits"),
        fit_data=load_split("train"),
        ensemble=ENSEMBLE,
    )
    assert report["thresholds"] == shipped
    assert (report["ensemble"]["threshold"], report["ensemble"]["min_p_threshold"]) == first[1]


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
