"""`guard replay`: stream a video as N cameras into a running guard (guard/tools/replay.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from guard.tools import credentials


def run(args: argparse.Namespace) -> int:
    if not args.video.is_file():
        raise SystemExit(f"guard replay: {args.video}: no such video file")
    from guard.tools.replay import main as replay_main  # lazy: tritonclient, PyAV

    return replay_main(args)


def add(commands) -> None:
    replay = commands.add_parser(
        "replay",
        help="stream a video as N cameras into a running guard: latency, "
        "verdicts, an annotated video (guard/tools/replay.py)",
    )
    replay.add_argument("video", type=Path)
    replay.add_argument("--target", required=True, help="the guard's gRPC address, HOST:PORT")
    replay.add_argument("--model", required=True)
    replay.add_argument("--cameras", type=int, default=4)
    replay.add_argument("--fps", type=float, default=10.0)
    replay.add_argument("--frames", type=int, default=100, help="frames of the video each camera sends")
    replay.add_argument("--boxes", choices=("yolo",), help="draw the model's detections in this format")
    replay.add_argument("--labels", type=Path, help="class names, one per line")
    replay.add_argument("--out", type=Path, default=Path("reports/replay"))
    credentials.add_arguments(replay)
    replay.set_defaults(func=run)
