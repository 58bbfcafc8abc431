"""Encoded images through a live gateway: clients send JPEG or PNG bytes of any size (BYTES, one per
row, through tritonclient), the guard decodes and resizes the whole batch, and a corrupt image or
one over the pixel limit fails its own request with INVALID_ARGUMENT while the others are served."""

from __future__ import annotations

import io
import queue
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tritonclient.utils import InferenceServerException

from guard.detection.preprocess.resizing import letterbox_geometry
from tests.conftest import running_gateway
from tests.serving.helpers import GateDetector, write_config

SIZE = 32
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def small_cnn(path) -> None:
    """Conv 3x3 over RGB -> ReLU -> global average pool -> linear: logits [N, 4]."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(size=(6, 3, 3, 3)).astype(np.float32),
        "b": rng.normal(size=6).astype(np.float32),
        "fc": rng.normal(size=(6, 4)).astype(np.float32),
        "fb": rng.normal(size=4).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["features"]),
        helper.make_node("Gemm", ["features", "fc", "fb"], ["logits"]),
    ]
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(
        nodes, "cnn", [image], [logits], [numpy_helper.from_array(v, k) for k, v in weights.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def camera_repository(root: Path, **config) -> Path:
    """root/repository with one model, `cam`: small_cnn taking one JPEG or PNG per row, resized to
    SIZE x SIZE, with a squeeze detector that never flags; `config` adds or replaces top-level keys."""
    directory = root / "repository" / "cam"
    directory.mkdir(parents=True)
    small_cnn(directory / "model.onnx")
    table = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": []}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [4]}],
        "preprocess": {"kind": "images", "height": SIZE, "width": SIZE, "mean": MEAN, "std": STD},
        "detectors": [{"name": "median_2x2", "type": "squeeze_median", "size": 2, "threshold": 1e9}],
    }
    write_config(root / "repository", {**table, **config}, "cam")
    return root / "repository"


def encode(image: np.ndarray, kind: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=kind, **({"quality": 95} if kind == "JPEG" else {}))
    return out.getvalue()


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth RGB image (JPEG keeps it nearly intact): gradients plus a little texture."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    base = np.stack([rows / height, cols / width, (rows + cols) / (height + width)], -1)
    return np.clip((base * 200 + rng.normal(0, 8, (height, width, 3))), 0, 255).astype(np.uint8)


@pytest.fixture
def repository(tmp_path, gate):
    directory = tmp_path / "repository" / "cam"
    directory.mkdir(parents=True)
    small_cnn(directory / "model.onnx")
    write_config(
        tmp_path / "repository",
        {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": []}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [4]}],
            "preprocess": {
                "kind": "images",
                "height": SIZE,
                "width": SIZE,
                "mean": MEAN,
                "std": STD,
                "resize": "letterbox",
                "max_pixels": 200 * 200,
            },
            "batching": {"max_batch_size": 64},
            "detectors": [
                {"name": "gate", "type": GateDetector.kind, "bits": 5, "threshold": 1e9},
                {"name": "median_2x2", "type": "squeeze_median", "size": 2, "threshold": 1e9},
            ],
        },
        "cam",
    )
    return tmp_path / "repository"


def expected_logits(model, data: bytes) -> np.ndarray:
    """What the model answers for one image preprocessed by hand: decode, letterbox, normalise."""
    image = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
    image = image.float().div(255.0)[None]
    new_h, new_w, top, left = letterbox_geometry(*image.shape[-2:], SIZE, SIZE)
    fitted = torch.full((1, 3, SIZE, SIZE), 0.5)
    shrinking = new_h < image.shape[-2] or new_w < image.shape[-1]
    fitted[..., top : top + new_h, left : left + new_w] = torch.nn.functional.interpolate(
        image, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=shrinking
    ).clamp(0, 1)
    normalised = (fitted - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return model.run(["logits"], {"input": normalised.numpy()})[0][0]


def bytes_input(items: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_))
    return tensor


def test_one_batch_of_mixed_images_serves_the_good_and_rejects_the_bad_alone(repository, gate):
    model = ort.InferenceSession(str(repository / "cam" / "model.onnx"), providers=["CPUExecutionProvider"])
    good = {
        "jpeg-wide": [encode(photo(60, 120, 0))],
        "png-tall": [encode(photo(90, 40, 1), "PNG")],
        "two-rows": [encode(photo(48, 48, 2)), encode(photo(30, 70, 3))],
    }
    bad = {
        "corrupt": ([encode(photo(40, 40, 4))[:200] + b"\x00" * 50], "row 0: corrupt JPEG"),
        "not-an-image": ([b"hello, world"], "row 0: not a JPEG or PNG image"),
        "too-large": ([encode(photo(210, 210, 5))], "210x210 pixels, over the model's limit of 40000"),
        "bad-second-row": ([encode(photo(20, 20, 6)), b"GIF89a"], "row 1: not a JPEG or PNG image"),
    }
    answers: queue.Queue = queue.Queue()
    with running_gateway(repository) as srv, gate, triton.InferenceServerClient(srv.grpc_url) as client:
        client.async_infer(
            "cam", [bytes_input(good["jpeg-wide"])], lambda result, error: answers.put(("first", result, error))
        )
        assert gate.entered.wait(30)  # the first batch is held: everything else queues into one batch
        for tag, items in [*good.items(), *((t, items) for t, (items, _) in bad.items())]:
            client.async_infer(
                "cam",
                [bytes_input(items)],
                lambda result, error, tag=tag: answers.put((tag, result, error)),
                client_timeout=60,
            )
        gate.open()
        results = {tag: (result, error) for tag, result, error in (answers.get(timeout=60) for _ in range(8))}
    for tag, items in good.items():
        result, error = results["first" if tag == "jpeg-wide" else tag]
        assert error is None, (tag, error)
        np.testing.assert_allclose(
            result.as_numpy("logits"), [expected_logits(model, d) for d in items], rtol=1e-4, atol=1e-4
        )
    for tag, (_, message) in bad.items():
        result, error = results[tag]
        assert isinstance(error, InferenceServerException), tag
        assert error.status() == "StatusCode.INVALID_ARGUMENT" and "input 'image'" in error.message(), tag
        assert message in error.message(), (tag, error.message())
