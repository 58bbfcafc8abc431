"""guard.detection.preprocess.resizing, the one resize every preprocessor and recipe uses: bilinear,
antialiased when shrinking (torchvision's Resize(antialias=True), what Pillow-trained weights saw),
plain bilinear when growing; the `frames` and `images` preprocessors give the same pixels for the
same frame; letterboxed boxes map back onto the frame."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from guard.detection.preprocess.frames import FramesPreprocessor
from guard.detection.preprocess.images import ImagesPreprocessor
from guard.detection.preprocess.resizing import boxes_to_frame, fit, letterbox, letterbox_geometry, resize
from guard.protocol.spec import TensorSpec

NORMALISED = {"height": 48, "width": 64, "mean": [0.0], "std": [1.0]}


def frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Fine texture (noise): what aliases when shrunk without a low-pass."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def as_float(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def test_shrinking_antialiases_like_torchvision_and_growing_is_plain_bilinear():
    v2 = pytest.importorskip("torchvision.transforms.v2")
    x = as_float(frame(300, 400))
    torch.testing.assert_close(resize(x, 48, 64), v2.Resize((48, 64), antialias=True)(x), atol=1e-5, rtol=0)
    assert (resize(x, 48, 64) - F.interpolate(x, size=(48, 64), mode="bilinear")).abs().max() > 0.1
    small = x[..., :20, :30]
    torch.testing.assert_close(resize(small, 40, 60), F.interpolate(small, size=(40, 60), mode="bilinear"))
    # shrinking on one side only still low-passes that side
    torch.testing.assert_close(resize(x, 400, 64), v2.Resize((400, 64), antialias=True)(x), atol=1e-5, rtol=0)


def test_frames_and_images_preprocessors_feed_the_model_the_same_pixels():
    rgb = frame(300, 400, seed=1)
    frames = FramesPreprocessor(TensorSpec("frames", "UINT8", (-1, -1, 3)), "input", **NORMALISED)
    images = ImagesPreprocessor(
        TensorSpec("image", "BYTES", ()),
        "input",
        **NORMALISED,
        resize="stretch",
        pad_value=0.5,
        resize_shorter=0,
        max_pixels=10**7,
    )
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")  # lossless: the decoded pixels are these
    cpu = torch.device("cpu")
    from_frames = frames.prepare([rgb[None]], cpu).rows
    from_images = images.prepare([np.array([png.getvalue()], dtype=object)], cpu).rows
    assert from_frames.shape == from_images.shape == (1, 3, 48, 64)
    torch.testing.assert_close(from_frames, from_images)
    torch.testing.assert_close(from_frames, resize(as_float(rgb), 48, 64).clamp(0, 1))


def test_letterboxed_boxes_map_back_onto_the_frame():
    x = as_float(frame(300, 400, seed=2))
    boxed = letterbox(x, 416, 416, 0.5)
    new_h, new_w, top, left = letterbox_geometry(300, 400, 416, 416)
    assert (new_h, new_w, top, left) == (312, 416, 52, 0)
    assert torch.all(boxed[..., :top, :] == 0.5) and torch.all(boxed[..., top + new_h :, :] == 0.5)
    torch.testing.assert_close(boxed[..., top : top + new_h, :], resize(x, new_h, new_w))
    placed = np.array([[left, top, left + new_w, top + new_h], [left + new_w / 2, top, left + new_w, top + new_h / 2]])
    np.testing.assert_allclose(boxes_to_frame(placed, 300, 400, 416, 416), [[0, 0, 400, 300], [200, 0, 400, 150]])
    # a sliver: its 3 rows become 1, so each axis has its own scale
    new_h, new_w, top, left = letterbox_geometry(3, 1000, 416, 416)
    np.testing.assert_allclose(
        boxes_to_frame(np.array([left, top, left + new_w, top + new_h]), 3, 1000, 416, 416), [0, 0, 1000, 3], rtol=1e-6
    )


def test_fit_knows_its_three_modes_only():
    x = as_float(frame(30, 40))
    assert fit(x, "stretch", 24, 24).shape == fit(x, "letterbox", 24, 24).shape == (1, 3, 24, 24)
    assert fit(x, "center-crop", 24, 24).shape == (1, 3, 24, 24)
    with pytest.raises(ValueError, match="stretch, letterbox, center-crop"):
        fit(x, "crop", 24, 24)
