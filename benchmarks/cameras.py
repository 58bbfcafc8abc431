"""Cameras: real JPEG frames from many streams into one guarded camera model, and one camera that
floods while others keep their pace.

    python -m benchmarks.cameras [--cameras 1 4 16] [--fps 25] [--duration 8] [--out reports/cameras]

Needs the camera repository (`make camera-models && python -m guard_examples.camera_guard`); it serves
MobileNetV2 (one JPEG per request, decoded and resized inside the guard). Frames are bikes.mp4 as
a camera would send them (JPEG, quality 90, full size). One `guard serve` process serves two
entries: `guard` (the calibrated detectors, policy flag) and `passthrough` (no detectors).

Each camera is one ModelStreamInfer stream with its `camera_id`, sending frame k at k / fps
seconds whatever came back (open loop); latency counts from that scheduled time, so a camera held
back by flow control shows it. Printed, all from this run:

1. In-process floors: frames/s of the same entries run in this process without gRPC (decode,
   resize, model and detectors at batch 16).
2. Per camera count at `--fps`: frames offered and answered per second, p50/p99 latency, answers
   later than one frame interval, errors by status, guard and passthrough side by side.
3. Fairness: the guard's capacity C is measured first (one stream as fast as its window lets it);
   then 7 cameras taking 50%, 60% and 70% of C together, alone; with an 8th camera flooding at ten
   times one normal camera's rate; and the same with no camera_id on any request (one first-come
   queue). The normal cameras' p99 in each, as ratios to their p99 alone.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.camera_streams import CameraRun, cameras_at, capacity, frame_requests
from benchmarks.gateway_process import start_gateway
from benchmarks.repositories import _derive
from guard.tools.clean_data import encode_jpeg

log = logging.getLogger("benchmarks.cameras")
ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "build" / "camera-repository" / "mobilenet_v2"
NORMAL_CAMERAS = 7
FLOOD_FACTOR = 10
# The share of the guard's capacity C the 7 normal cameras take together; the flood sends at ten
# times one normal camera's rate on top (at 0.5: 0.71 C, together 1.21 C; at 0.7: the whole
# capacity on its own, together 1.7 C). How close the normal cameras' p99 stays to their p99 alone
# depends on how busy they keep the guard by themselves, so the benchmark measures several loads.
NORMAL_LOADS = (0.5, 0.6, 0.7)


def summarize(runs: dict[str, CameraRun], duration: float, fps: float | None = None) -> dict:
    latencies = np.concatenate([np.asarray(r.latencies) for r in runs.values()]) * 1e3
    errors = collections.Counter()
    for r in runs.values():
        errors.update(r.errors)
    # Answers keep coming after the last frame is sent: throughput is over the time until the last one.
    span = max(r.last_answer for r in runs.values()) - min(r.started for r in runs.values())
    out = {
        "cameras": len(runs),
        "offered_fps": sum(r.offered for r in runs.values()) / duration,
        "answered_fps": len(latencies) / max(span, duration),
        "errors": dict(errors),
    }
    if len(latencies):
        out.update(p50_ms=float(np.percentile(latencies, 50)), p99_ms=float(np.percentile(latencies, 99)))
        if fps:
            out["late_share"] = float(np.mean(latencies > 1e3 / fps))
    return out


def floors(repository: Path, jpegs: list[bytes], batch: int = 16, rounds: int = 4) -> dict[str, float]:
    """Frames/s of each entry run in this process, no gRPC and no batcher: the work itself."""
    from guard.serving.metrics import GuardMetrics
    from guard.serving.model_config import load_model_config
    from guard.serving.runtime import ModelRuntime

    # As `guard serve` runs them (--torch-threads 1): torch's own pool beside ONNX Runtime's
    # oversubscribes the cores, and a busy host makes every small torch op wait for a thread.
    torch.set_num_threads(1)
    out = {}
    for name in ("passthrough", "guard"):
        runtime = ModelRuntime(load_model_config(repository / name), GuardMetrics().for_model(name))
        requests = [{"image": np.array([jpegs[i % len(jpegs)]], dtype=object)} for i in range(batch)]
        runtime.execute(requests)  # warm-up
        start = time.perf_counter()
        for _ in range(rounds):
            runtime.execute(requests)
        out[name] = batch * rounds / (time.perf_counter() - start)
        runtime.backend.close()
    return out


def build_repository(target: Path) -> Path:
    if not (SOURCE / "config.toml").exists():
        raise SystemExit(
            f"{SOURCE} is missing: run `make camera-models && python -m guard_examples.camera_guard` first"
        )
    _derive(SOURCE, target, "guard", None, "flag")
    _derive(SOURCE, target, "passthrough", (), "flag")
    return target


def _row(label: str, s: dict) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(s["errors"].items())) or "-"
    late = f"{s['late_share']:.1%}" if "late_share" in s else "-"
    return (
        f"| {label} | {s['offered_fps']:.1f} | {s['answered_fps']:.1f} | {s.get('p50_ms', float('nan')):.1f} | "
        f"{s.get('p99_ms', float('nan')):.1f} | {late} | {errors} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load point")
    parser.add_argument("--frames", type=int, default=48, help="distinct video frames sent in turn")
    parser.add_argument(
        "--transports",
        nargs="+",
        choices=("jpeg", "shm"),
        default=["jpeg", "shm"],
        help="JPEG inside each request, or written into the camera's shared-memory region",
    )
    parser.add_argument("--skip-fairness", action="store_true")
    parser.add_argument("--skip-cameras", action="store_true", help="only the fairness part")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "cameras")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from guard_examples.footage import video_frames

    jpegs = [encode_jpeg(frame) for frame in video_frames("bikes", limit=args.frames)]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "fps": args.fps,
        "duration_s": args.duration,
        "frame_bytes_mean": float(np.mean([len(j) for j in jpegs])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        repository = build_repository(Path(tmp) / "repository")
        results["floor_fps"] = floors(repository, jpegs)
        points = (
            []
            if args.skip_cameras
            else [
                (transport, config, n)
                for n in args.cameras
                for transport in args.transports
                for config in ("guard", "passthrough")
            ]
        )
        with start_gateway(repository, "--shared-memory") as gateway:
            results["streams"] = []
            for transport, config, n in tqdm(points, desc="camera counts", unit="point"):
                rates = {f"camera-{i}": args.fps for i in range(n)}
                runs = asyncio.run(cameras_at(gateway.target, config, jpegs, rates, args.duration, transport=transport))
                results["streams"].append(
                    {"config": config, "transport": transport, **summarize(runs, args.duration, args.fps)}
                )
            if args.skip_fairness:
                return _write(args.out, results)
            c = asyncio.run(capacity(gateway.target, frame_requests("guard", jpegs), args.duration))
            fairness = {"capacity_fps": c, "loads": []}
            scenarios = [
                (load, label) for load in NORMAL_LOADS for label in ("alone", "with_flood", "with_flood_no_camera_id")
            ]
            for load, label in tqdm(scenarios, desc="fairness", unit="scenario"):
                rate = load * c / NORMAL_CAMERAS
                rates = {f"camera-{i}": rate for i in range(NORMAL_CAMERAS)}
                if label != "alone":
                    rates["flood"] = rate * FLOOD_FACTOR
                if label == "alone":
                    fairness["loads"].append({"load": load, "normal_fps": rate, "flood_fps": rate * FLOOD_FACTOR})
                runs = asyncio.run(
                    cameras_at(
                        gateway.target,
                        "guard",
                        jpegs,
                        rates,
                        args.duration,
                        name_cameras=label != "with_flood_no_camera_id",
                    )
                )
                fairness["loads"][-1][label] = {
                    "normal": summarize({k: v for k, v in runs.items() if k != "flood"}, args.duration),
                    **({"flood": summarize({"flood": runs["flood"]}, args.duration)} if "flood" in runs else {}),
                }
            results["fairness"] = fairness
    return _write(args.out, results)


def _write(out: Path, results: dict) -> int:
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (out / "results.md").write_text(text)
    print(text)
    return 0


def report(r: dict) -> str:
    kib = r["frame_bytes_mean"] / 1024
    lines = [
        f"# Cameras: MobileNetV2 under the guard, JPEG frames of bikes.mp4 (mean {kib:.0f} KiB)",
        "",
        "In-process floor (no gRPC, batch 16): "
        + ", ".join(f"{k} {v:.1f} frames/s" for k, v in r["floor_fps"].items()),
        "",
        f"## Cameras at {r['fps']:g} fps, {r['duration_s']:g} s each",
        "",
        "| entry, transport, cameras | offered fps | answered fps | p50 ms | p99 ms | later than 1 frame | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_row(f"{s['config']}, {s['transport']}, {s['cameras']}", s) for s in r["streams"]]
    if "fairness" not in r:
        return "\n".join(lines) + "\n"
    f = r["fairness"]
    lines += [
        "",
        f"## One camera flooding (guard capacity {f['capacity_fps']:.1f} frames/s)",
        "",
        f"{NORMAL_CAMERAS} normal cameras taking a share of the capacity together, alone; with an 8th "
        f"camera sending {FLOOD_FACTOR}x one normal camera's rate; and the same with no camera_id on any "
        "request (one first-come queue).",
        "",
        "| normal load | scenario | offered fps | answered fps | p50 ms | p99 ms | later than 1 frame | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for point in f["loads"]:
        for label in ("alone", "with_flood", "with_flood_no_camera_id"):
            lines.append(_row(f"{point['load']:.0%} | {label}: normal cameras", point[label]["normal"]))
            if "flood" in point[label]:
                lines.append(_row(f"{point['load']:.0%} | {label}: the flood", point[label]["flood"]))
    lines += ["", "| normal load | normal p99 with the flood / alone | the same without camera_id |", "|---|---|---|"]
    for point in f["loads"]:
        alone = point["alone"]["normal"].get("p99_ms")
        ratios = [
            point[k]["normal"].get("p99_ms", float("nan")) / alone if alone else float("nan")
            for k in ("with_flood", "with_flood_no_camera_id")
        ]
        lines.append(f"| {point['load']:.0%} | {ratios[0]:.2f} | {ratios[1]:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
