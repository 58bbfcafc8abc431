"""The ONNX interpreter behind `[backend] kind = "torch"` (guard.backends.onnx_torch), op by op
against ONNX Runtime: the ops other CNN exports and detection heads bring, and the graphs it must
refuse rather than answer differently (an op it lacks, a resize it cannot match)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from guard.backends.torch_runtime import TorchBackend
from guard.protocol.errors import ConfigError
from tests.conftest import DEMO_REPOSITORY

FP32 = DEMO_REPOSITORY / "digits_fp32" / "model.onnx"


def test_ops_beyond_the_demo_match_onnxruntime():
    """The ops added for other CNN exports (BatchNormalization, Clip, Concat, Transpose, Squeeze,
    Unsqueeze, ReduceMean, HardSigmoid, HardSwish), on one small graph against ONNX Runtime."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"], epsilon=1e-3),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["clip"]),
        helper.make_node("HardSwish", ["clip"], ["hs"]),
        helper.make_node("HardSigmoid", ["bn"], ["hsig"], alpha=0.3, beta=0.4),
        helper.make_node("Concat", ["hs", "hsig"], ["cat"], axis=1),
        helper.make_node("Transpose", ["cat"], ["tr"], perm=[0, 2, 3, 1]),
        helper.make_node("ReduceMean", ["tr"], ["mean"], axes=[1, 2], keepdims=1),
        helper.make_node("Squeeze", ["mean", "axes12"], ["sq"]),
        helper.make_node("Unsqueeze", ["sq", "axes2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ops",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3, 4, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 6, 1])],
        [
            init("s", rng.random(3, dtype=np.float32) + 0.5),
            init("b", rng.random(3, dtype=np.float32)),
            init("m", rng.random(3, dtype=np.float32)),
            init("v", rng.random(3, dtype=np.float32) + 0.1),
            init("lo", np.float32(-1.0)),
            init("hi", np.float32(2.5)),
            init("axes12", np.array([1, 2], np.int64)),
            init("axes2", np.array([-1], np.int64)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    x = rng.normal(0, 2, (3, 3, 4, 5)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[
        0
    ]
    from guard.backends.onnx_torch import OnnxClassifier

    got = OnnxClassifier(model).run(torch.from_numpy(x), ["y"])[0].numpy()
    assert got.shape == expected.shape == (3, 6, 1)
    np.testing.assert_allclose(got, expected, atol=1e-5)


class _DetectorHead(torch.nn.Module):
    """What a YOLO export holds beyond a classifier: a replicate pad before a stride-1 max-pool
    (exported as a constant chain ConstantOfShape -> Concat -> Slice with step -1 -> Cast -> Pad
    edge), nearest upsampling (Resize), slices with open ends and the boxes' Exp."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)
        y = torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest")
        return torch.cat([y[:, :1, 1:, :-1], torch.exp(y[:, 1:, 1:, :-1] * 0.5)], dim=1)


def test_detector_ops_match_onnxruntime(tmp_path):
    import warnings

    import onnxruntime as ort

    from guard.backends.onnx_torch import load_onnx_classifier

    path = tmp_path / "head.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _DetectorHead(),
            (torch.zeros(1, 3, 6, 7),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Pad", "Resize", "Slice", "Exp", "ConstantOfShape"} <= ops, ops  # the export still emits them
    x = np.random.default_rng(3).normal(size=(2, 3, 6, 7)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    net = load_onnx_classifier(path)
    got = net(torch.from_numpy(x)).detach().numpy()
    assert got.shape == expected.shape == (2, 3, 11, 13)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(net.folded()(torch.from_numpy(x)).detach().numpy(), got)  # constants folded


def test_a_resize_the_interpreter_cannot_match_is_refused():
    from guard.backends.onnx_torch import OnnxClassifier

    graph = helper.make_graph(
        [
            helper.make_node(
                "Resize", ["x", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric"
            )
        ],
        "resize",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 12, 12])],
        [numpy_helper.from_array(np.array([1, 1, 3, 3], np.float32), "scales")],
    )
    net = OnnxClassifier(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    # By 3, round_prefer_floor samples i/3 rounded (2/3 up), which floor-based upsampling does not.
    with pytest.raises(ConfigError, match="whole scales"):
        net.run(torch.zeros(1, 1, 4, 4), ["y"])


def test_a_model_with_an_op_the_interpreter_lacks_is_refused(tmp_path):
    model = onnx.load(str(FP32))
    next(n for n in model.graph.node if n.op_type == "Relu").op_type = "Selu"
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ConfigError, match="Selu"):
        TorchBackend.open(tmp_path / "model.onnx", device="cpu")
