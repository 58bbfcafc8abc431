"""The `images` preprocessing's `resize = "center-crop"`: the shorter side resized to
`resize_shorter`, the centre cut out, the same pixels torchvision's Resize + CenterCrop give (the
transform ImageNet classifiers such as MobileNetV2 were trained for), and settings that would crop
outside the image refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from guard.detection.preprocess.images import ImagesPreprocessor
from guard.detection.preprocess.resizing import center_crop, center_crop_geometry
from guard.protocol.spec import TensorSpec

SOURCE = TensorSpec("image", "BYTES", ())
DEFAULTS = {"mean": [0.0], "std": [1.0], "pad_value": 0.5, "max_pixels": 40_000_000}
# (height, width): landscape and portrait, square, smaller than the crop (scaled up), odd offsets.
SHAPES = [(272, 640), (144, 176), (512, 512), (683, 1024), (1080, 810), (300, 451), (225, 301), (257, 999)]


def preprocessor(**params) -> ImagesPreprocessor:
    return ImagesPreprocessor(SOURCE, "input", **{**DEFAULTS, "resize_shorter": 0, **params})


def png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")  # lossless: the decoded pixels are these
    return out.getvalue()


@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_geometry_and_pixels_are_torchvisions_resize_and_center_crop(height, width):
    v2 = pytest.importorskip("torchvision.transforms.v2")
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    expected = v2.CenterCrop(224)(v2.Resize(256, antialias=True)(x))
    new_h, new_w, _, _ = center_crop_geometry(height, width, 256, 224, 224)
    assert (new_h, new_w) == tuple(v2.Resize(256)(x).shape[-2:])
    # torchvision also antialiases when it scales up, which a bilinear kernel leaves all but unchanged
    torch.testing.assert_close(center_crop(x, 256, 224, 224), expected, atol=1e-5, rtol=0)


def test_a_non_square_crop_is_taken_from_the_centre():
    x = torch.arange(6 * 10, dtype=torch.float32).view(1, 1, 6, 10)
    assert center_crop_geometry(6, 10, 6, 4, 5) == (6, 10, 1, 2)  # (10 - 5) / 2 = 2.5 rounds to even
    torch.testing.assert_close(center_crop(x, 6, 4, 5), x[..., 1:5, 2:7])


def test_served_rows_are_the_decoded_image_cropped(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((96, 160), (150, 70), (40, 40))]
    pre = preprocessor(height=32, width=48, resize="center-crop", resize_shorter=56)
    prepared = pre.prepare([np.array([png(rgb)], dtype=object) for rgb in images], torch.device("cpu"))
    assert not prepared.failed and prepared.rows.shape == (3, 3, 32, 48)
    for row, rgb in zip(prepared.rows, images):
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
        torch.testing.assert_close(row, center_crop(x, 56, 32, 48, eight_bit=True)[0].clamp(0, 1))


@pytest.mark.parametrize(("height", "width"), SHAPES[:4])
def test_an_8_bit_image_stays_8_bit_like_torchvisions_resize_of_a_uint8_image(height, width):
    v2 = pytest.importorskip("torchvision.transforms.v2")
    image = torch.from_numpy(np.random.default_rng(height).integers(0, 256, (3, height, width), dtype=np.uint8))
    expected = v2.CenterCrop(224)(v2.Resize(256, antialias=True)(image)).float()
    got = center_crop(image[None].float() / 255.0, 256, 224, 224, eight_bit=True)[0] * 255.0
    torch.testing.assert_close(got, got.round(), atol=1e-3, rtol=0)  # on 8-bit levels
    # torchvision resizes uint8 in fixed point, the guard in floating point: one level apart at most
    assert (got - expected).abs().max() <= 1.0 + 1e-3


def test_resize_shorter_defaults_to_the_least_cropping_and_never_crops_outside_the_image():
    assert preprocessor(height=224, width=160, resize="center-crop").resize_shorter == 224
    with pytest.raises(ValueError, match="at least max\\(height, width\\) = 224"):
        preprocessor(height=224, width=160, resize="center-crop", resize_shorter=200)
    with pytest.raises(ValueError, match='only with resize = "center-crop"'):
        preprocessor(height=224, width=224, resize="stretch", resize_shorter=256)
    with pytest.raises(ValueError, match="stretch, letterbox, center-crop"):
        preprocessor(height=224, width=224, resize="crop")
