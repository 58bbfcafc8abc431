"""The classifier attacks send what the gateway feeds the model: the frame resized as the served
[preprocess] resizes it, so the gateway's centre crop of the example is exactly the attacked crop."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from guard.detection.preprocess.resizing import center_crop
from guard_examples import footage
from guard_examples.classifier_attack import _crop, _paste, served_view
from guard_examples.mobilenet_v2 import GUARD_PREPROCESS, guard_preprocessor

pytestmark = pytest.mark.usefixtures("camera_packages")


@pytest.mark.parametrize("shape", [(272, 640), (144, 176), (300, 451)])
def test_the_gateway_feeds_the_model_the_attacked_crop_unchanged(shape):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    view, box = served_view(frame, GUARD_PREPROCESS)
    assert min(view.shape[:2]) == GUARD_PREPROCESS["resize_shorter"] and box[2:] == (224, 224)
    # the view is the gateway's own resize of the frame: cropping it gives what the frame would give
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
    expected = center_crop(x, 256, 224, 224, eight_bit=True)[0].clamp(0, 1)
    torch.testing.assert_close(
        torch.from_numpy(_crop(view, box)).permute(2, 0, 1).float() / 255.0, expected, atol=1e-6, rtol=0
    )
    attacked = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    sent = _paste(view, attacked, box)
    png = io.BytesIO()
    Image.fromarray(sent).save(png, format="PNG")  # lossless, so only the gateway's geometry is tested
    pre = guard_preprocessor(GUARD_PREPROCESS)
    rows = pre.prepare([np.array([png.getvalue()], dtype=object)], torch.device("cpu")).rows
    torch.testing.assert_close(rows[0], torch.from_numpy(attacked).permute(2, 0, 1).float() / 255.0, atol=1e-6, rtol=0)


def test_a_stretch_config_attacks_the_whole_resized_frame():
    frame = footage.skimage_photo("chelsea")
    stretch = {**{k: v for k, v in GUARD_PREPROCESS.items() if k != "resize_shorter"}, "resize": "stretch"}
    view, box = served_view(frame, stretch)
    assert view.shape == (224, 224, 3) and box == (0, 0, 224, 224)
