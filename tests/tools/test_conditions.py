"""Simulated conditions (guard.tools.evaluation.conditions): each ramps from nothing on the first
frame to its full size on the last, on real photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from guard.tools.evaluation.conditions import CONDITIONS, under


@pytest.fixture(scope="module")
def frames():
    from skimage import data

    photo = data.astronaut()[::4, ::4]  # 128 x 128 x 3
    return [photo] * 5


def decoded(encoded: list[bytes]) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).astype(np.float32) for b in encoded]


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_a_ramp_starts_where_the_camera_was(frames, name):
    first = decoded(under(name, frames))[0]
    reference = decoded(under("clean", frames))[0]
    np.testing.assert_array_equal(first, reference)


@pytest.mark.parametrize(
    "name, measure, direction",
    [
        ("dusk", lambda x: x.mean(), -1),
        ("dawn", lambda x: x.mean(), +1),
        ("haze", lambda x: x.std(), -1),
    ],
)
def test_light_and_weather_move_the_frame_steadily(frames, name, measure, direction):
    values = [measure(x) for x in decoded(under(name, frames))]
    assert all(direction * (b - a) > 0 for a, b in zip(values, values[1:])), values
    if name == "dusk":
        assert values[-1] / values[0] == pytest.approx(0.6, abs=0.02)
    if name == "dawn":  # bright pixels clip at 255, so the mean gains less than 40%
        assert 1.15 < values[-1] / values[0] <= 1.4


def test_gain_noise_jpeg_and_pan_change_the_last_frame(frames):
    clean = decoded(under("clean", frames))[-1]
    for name in ("gain", "jpeg", "pan"):
        last = decoded(under(name, frames))[-1]
        assert last.shape == clean.shape and np.abs(last - clean).mean() > 2.0, name
    assert len(under("jpeg", frames)[-1]) < len(under("clean", frames)[-1])  # quality 40 is smaller


def test_an_unknown_condition_names_the_known_ones(frames):
    with pytest.raises(ValueError, match="dusk"):
        under("snow", frames)
