"""guard_examples.footage: real frames and photos from installed packages (decoded and JPEG-encoded by
guard.tools.clean_data, tested in tests/tools/test_clean_data.py)."""

from __future__ import annotations

import numpy as np
import pytest

from guard_examples import footage, opencv_footage

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


def _cuts(frames: list[np.ndarray]) -> list[int]:
    """The rule footage.CUTS documents: a frame whose mean absolute difference from the one before is
    at least 10x the clip's median difference starts a shot."""
    small = np.stack([f[::4, ::4].astype(np.float32) for f in frames])
    diffs = np.abs(np.diff(small, axis=0)).mean(axis=(1, 2, 3))
    return [i + 1 for i, d in enumerate(diffs) if d >= 10 * np.median(diffs)]


@pytest.mark.parametrize("name", ["bikes", "carphone", "bigbuckbunny", "vtest"])
def test_the_cuts_are_where_the_clip_changes_shot(name):
    # The protocol's cameras rest on these: a clip with a cut is a montage, never a judged camera.
    frames = list(footage.video_frames(name))
    assert _cuts(frames) == list(footage.CUTS.get(name, ()))


def test_shots_split_a_clip_at_its_cuts_and_keep_every_frame():
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(250)]
    shots = footage.shots("bikes", frames)
    assert [len(s) for s in shots] == [30, 46, 61, 50, 55, 8]
    assert [int(s[0][0, 0, 0]) for s in shots] == [0, *footage.CUTS["bikes"]]
    assert footage.shots("carphone", frames) == [frames]


def test_vtest_is_the_fixed_camera_clip_from_the_assets_folder():
    path = footage.video_path("vtest")
    assert path.parent == footage.assets_dir()
    assert opencv_footage.digest(path) == opencv_footage.SHA256["vtest.avi"]
    first = footage.video_frame("vtest", 0)
    assert first.shape == (576, 768, 3) and first.dtype == np.uint8


def test_a_missing_vtest_says_how_to_fetch_it(monkeypatch, tmp_path):
    monkeypatch.setenv(footage.ASSETS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="guard_examples.opencv_footage"):
        footage.video_path("vtest")


def test_the_sdist_link_and_its_hash_are_read_from_the_simple_index():
    page = (
        '<a href="https://files.example/a/opencv_python_headless-4.13.0.0.tar.gz#sha256=' + "1" * 64 + '">x</a>'
        f'<a href="https://files.example/b/{opencv_footage.SDIST}#sha256=' + "ab" * 32 + '">y</a>'
    )
    assert opencv_footage.sdist_url(page) == (f"https://files.example/b/{opencv_footage.SDIST}", "ab" * 32)
    with pytest.raises(FileNotFoundError, match="not listed"):
        opencv_footage.sdist_url(page.replace(opencv_footage.SDIST, "other.tar.gz"))


def test_fetch_keeps_a_checked_video_without_downloading_again(monkeypatch, tmp_path):
    # Present and matching its pinned hash: nothing is fetched (no network in tests).
    (tmp_path / "vtest.avi").write_bytes(footage.video_path("vtest").read_bytes())

    class Downloaded(Exception):
        pass

    def urlopen(*args, **kwargs):
        raise Downloaded

    monkeypatch.setattr(opencv_footage.urllib.request, "urlopen", urlopen)
    assert opencv_footage.fetch(tmp_path) == [tmp_path / "vtest.avi"]
    (tmp_path / "vtest.avi").write_bytes(b"not the video")
    with pytest.raises(Downloaded):  # a file that fails its hash is fetched again
        opencv_footage.fetch(tmp_path)
