"""Squeezer maths against reference implementations (the paper's formula and scipy's median filter)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from guard.detection import squeezers

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.random((4, 3, 11, 13), dtype=np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_bit_depth_matches_formula(images, bits, device):
    levels = 2**bits - 1
    expected = np.round(images * levels) / levels
    got = squeezers.bit_depth(torch.from_numpy(images).to(device), bits).cpu().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert len(np.unique(got)) <= levels + 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_median_matches_scipy_reflect(images, size, device):
    # scipy filters each channel of each image separately: size 1 over batch and channel axes.
    expected = ndimage.median_filter(images, size=(1, 1, size, size), mode="reflect")
    got = squeezers.median(torch.from_numpy(images).to(device), size).cpu().numpy()
    np.testing.assert_array_equal(got, expected)


def test_median_removes_isolated_spike():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 1.0
    assert squeezers.median(x, 2).max() == 0.0
    assert squeezers.median(x, 3).max() == 0.0


def test_median_rejects_window_larger_than_image():
    with pytest.raises(ValueError, match="exceeds the image size"):
        squeezers.median(torch.zeros(1, 1, 3, 3), 4)
