"""`guard replay` as a user runs it: a video file streamed as several cameras into a live guard
(a small JPEG-taking model), every frame answered with a verdict, the pictures written."""

from __future__ import annotations

import json
import subprocess
import sys

import av
from PIL import Image

from tests.conftest import ROOT, running_gateway
from tests.serving.test_image_ingest import camera_repository, photo


def clip(path, frames: int = 12) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(photo(64, 96, i), format="rgb24")))
        container.mux(stream.encode())


def test_replay_streams_every_camera_and_writes_the_pictures(tmp_path):
    camera_repository(tmp_path)
    video = tmp_path / "clip.mp4"
    clip(video)
    out = tmp_path / "out"
    with running_gateway(tmp_path / "repository") as srv:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "guard",
                "replay",
                str(video),
                "--target",
                srv.grpc_url,
                "--model",
                "cam",
                "--cameras",
                "3",
                "--fps",
                "20",
                "--frames",
                "12",
                "--out",
                str(out),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr
    timeline = json.loads((out / "timeline.json").read_text())
    assert sorted((a["camera"], a["frame"]) for a in timeline) == [(c, f) for c in range(3) for f in range(12)]
    assert {a["verdict"] for a in timeline} == {"clean"} and all(a["latency_ms"] > 0 for a in timeline)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["camera", "frames", "p50"] and all(line.endswith("." * 12) for line in lines[1:4])
    assert Image.open(out / "contact_sheet.png").size[0] > 0
    with av.open(str(out / "annotated.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 12
