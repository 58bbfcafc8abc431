"""`guard replay`: a real video played as N cameras at F frames/s into a running guard.

    guard replay VIDEO --target HOST:PORT --model NAME [--cameras 4] [--fps 10] [--frames 100]
                 [--boxes yolo] [--labels coco.names] [--out reports/replay]
                 [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--token-file FILE]

Each camera is its own ModelStreamInfer stream (as a camera gateway would hold one), sending the
video's frames on an open-loop schedule (frame k at k / fps seconds, whether or not earlier
answers came back), each with its `camera_id` and an id naming camera and frame. Frames go as JPEG
when the model takes BYTES, as UINT8 H x W x 3 frames when it takes frames. Every answer's
verdict, score and outputs are kept; the command prints per-camera latency (p50/p99), answers
late by more than one frame interval, and a verdict timeline per camera, and writes
timeline.json, a contact sheet (contact_sheet.png) and an annotated video (annotated.mp4): each
frame's detections or top class, its border coloured by verdict.

A secured guard takes the client credentials of guard.tools.credentials (TLS, a client certificate,
a bearer token); before any camera starts, one metadata call checks that they are accepted, so
a wrong CA or token is one line, not a traceback per camera.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.tools.clean_data import encode_jpeg, video_frames
from guard.tools.credentials import NONE, ClientCredentials

log = logging.getLogger("guard.tools.replay")

SYMBOL = {"clean": ".", "adversarial": "A", "trigger": "T", "unchecked": "?", "error": "E"}


@dataclass
class Answer:
    camera: int
    frame: int
    sent: float
    received: float
    verdict: str
    score: float
    flagged_by: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: str = ""

    @property
    def latency_ms(self) -> float:
        return (self.received - self.sent) * 1e3


def client_input(
    client: triton.InferenceServerClient, model: str, frame: np.ndarray, credentials: ClientCredentials = NONE
) -> triton.InferInput:
    """The frame as the model's first input wants it: JPEG bytes or raw frames."""
    meta = client.get_model_metadata(model, as_json=True, headers=credentials.headers())["inputs"][0]
    if meta["datatype"] == "BYTES":
        tensor = triton.InferInput(meta["name"], [1], "BYTES")
        tensor.set_data_from_numpy(np.array([encode_jpeg(frame)], dtype=object))
    else:
        tensor = triton.InferInput(meta["name"], [1, *frame.shape], meta["datatype"])
        tensor.set_data_from_numpy(frame[None])
    return tensor


def check_access(target: str, model: str, credentials: ClientCredentials) -> None:
    """Raise SystemExit with one line when the guard refuses these credentials (or cannot be reached)."""
    with triton.InferenceServerClient(target, **credentials.triton_kwargs()) as client:
        try:
            client.get_model_metadata(model, headers=credentials.headers(), client_timeout=30)
        except InferenceServerException as exc:
            hint = " (a secured guard needs --tls-ca and/or --token-file)" if exc.status() in _REFUSED else ""
            raise SystemExit(f"guard replay: {target}: {exc.status()}: {exc.message()}{hint}") from None


_REFUSED = ("StatusCode.UNAVAILABLE", "StatusCode.UNAUTHENTICATED")
"""How a guard answers a client without the TLS or token it requires."""


def play_camera(
    target: str,
    model: str,
    camera: int,
    frames: list[np.ndarray],
    fps: float,
    start: float,
    answers: list[Answer],
    credentials: ClientCredentials = NONE,
) -> None:
    """One camera: one stream, frames sent on schedule, answers collected as they come."""
    sent: dict[str, float] = {}
    done: queue.Queue = queue.Queue()

    def received(result, error):
        now = time.monotonic()
        if error is not None:
            done.put((error.get_response().id if hasattr(error, "get_response") else "", now, None, str(error)))
        else:
            done.put((result.get_response().id, now, result, ""))

    with triton.InferenceServerClient(target, **credentials.triton_kwargs()) as client:
        inputs = [client_input(client, model, frame, credentials) for frame in frames]  # before the clock starts
        client.start_stream(callback=received, headers=credentials.headers())  # a stream is authenticated once
        try:
            for index, tensor in enumerate(inputs):
                delay = start + index / fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                request_id = f"{camera}:{index}"
                sent[request_id] = time.monotonic()
                client.async_stream_infer(
                    model, [tensor], request_id=request_id, parameters={"camera_id": f"camera-{camera}"}
                )
            for _ in range(len(inputs)):
                request_id, at, result, error = done.get(timeout=60)
                frame = int(request_id.split(":")[1]) if ":" in request_id else -1
                if result is None:
                    answers.append(Answer(camera, frame, sent.get(request_id, at), at, "error", 0.0, "", error=error))
                    continue
                params = result.get_response().parameters
                outputs = {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
                answers.append(
                    Answer(
                        camera,
                        frame,
                        sent[request_id],
                        at,
                        params["guard_verdict"].string_param,
                        params["guard_score"].double_param,
                        params["guard_flagged_by"].string_param,
                        outputs,
                    )
                )
        finally:
            client.stop_stream()


def replay(
    video: Path,
    target: str,
    model: str,
    cameras: int,
    fps: float,
    frames: int,
    credentials: ClientCredentials = NONE,
) -> list[Answer]:
    check_access(target, model, credentials)
    clip = video_frames(video, limit=frames)
    answers: list[Answer] = []
    start = time.monotonic() + 1.0  # every camera starts on the same clock, after its frames are encoded
    threads = [
        threading.Thread(target=play_camera, args=(target, model, c, clip, fps, start, answers, credentials))
        for c in range(cameras)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(answers, key=lambda a: (a.camera, a.frame))


def summary(answers: list[Answer], cameras: int, fps: float) -> list[str]:
    lines = [f"{'camera':>8} {'frames':>7} {'p50 ms':>8} {'p99 ms':>8} {'late':>5} {'flagged':>8}  timeline"]
    for camera in range(cameras):
        own = [a for a in answers if a.camera == camera]
        latency = np.array([a.latency_ms for a in own]) if own else np.zeros(1)
        late = sum(a.latency_ms > 1e3 / fps for a in own)
        flagged = sum(a.verdict not in ("clean", "error") for a in own)
        timeline = "".join(SYMBOL.get(a.verdict, "?") for a in own)
        lines.append(
            f"{camera:>8} {len(own):>7} {np.percentile(latency, 50):>8.1f} {np.percentile(latency, 99):>8.1f} "
            f"{late:>5} {flagged:>8}  {timeline}"
        )
    return lines


def main(args: argparse.Namespace) -> int:
    from guard.tools.replay_render import render

    credentials = ClientCredentials.from_args(args)
    answers = replay(args.video, args.target, args.model, args.cameras, args.fps, args.frames, credentials)
    for line in summary(answers, args.cameras, args.fps):
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "timeline.json").write_text(
        json.dumps(
            [
                {
                    "camera": a.camera,
                    "frame": a.frame,
                    "latency_ms": round(a.latency_ms, 3),
                    "verdict": a.verdict,
                    "score": a.score,
                    "flagged_by": a.flagged_by,
                    "error": a.error,
                }
                for a in answers
            ],
            indent=1,
        )
        + "\n"
    )
    labels = args.labels.read_text().splitlines() if args.labels else None
    written = render(args.video, answers, args.frames, args.out, boxes=args.boxes, labels=labels)
    print("wrote", ", ".join(str(p) for p in [args.out / "timeline.json", *written]))
    return 0 if all(a.verdict != "error" for a in answers) else 1
