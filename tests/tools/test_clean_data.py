"""guard.tools.clean_data's frame helpers, the one copy replay, calibration, the evaluation and the
demo recipes send and read frames with: JPEG as a camera encodes it, images and video decoded to
RGB uint8."""

from __future__ import annotations

import numpy as np
import pytest

from guard.tools.clean_data import decode_image, decode_video, encode_jpeg


def scene(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus fine noise: something JPEG's quality visibly trades against size."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 / width, ys * 255 / height, (xs + ys) * 127 / (width + height)], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 12, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_jpeg_quality_trades_size_for_fidelity():
    rgb = scene()
    small, large = encode_jpeg(rgb, 20), encode_jpeg(rgb, 95)
    assert small[:2] == large[:2] == b"\xff\xd8" and len(small) < len(large)
    error = {q: np.abs(decode_image(encode_jpeg(rgb, q)).astype(int) - rgb).mean() for q in (20, 95)}
    assert error[95] < error[20] < 20
    decoded = decode_image(large)
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8 and decoded.flags.writeable
    assert encode_jpeg(rgb) == encode_jpeg(rgb, 90)  # a camera's default, and deterministic
    with pytest.raises(ValueError):
        encode_jpeg(rgb, 0)


def test_video_frames_come_with_start_step_and_limit(tmp_path):
    av = pytest.importorskip("av")
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            frame = np.full((48, 64, 3), 20 * i, np.uint8)  # frame i is grey level 20 * i
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    frames = list(decode_video(video, start=2, step=3, limit=3))
    assert [f.shape for f in frames] == [(48, 64, 3)] * 3 and frames[0].dtype == np.uint8
    assert [round(float(f.mean()) / 20) for f in frames] == [2, 5, 8]
    assert len(list(decode_video(video, step=5))) == 3 and list(decode_video(video, limit=0)) == []
