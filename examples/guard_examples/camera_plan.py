"""The camera evaluation as a `guard evaluate` plan: what a user with a camera model runs.

    python -m guard_examples.camera_plan --out build/camera-plan [--protocol one-clip|time-split] [--factory] [--quick]
                                         [--conditions dusk gain jpeg ...]
    guard evaluate --plan build/camera-plan/plan.toml --report-dir reports/camera-plan

The plan directory is self-contained (paths in plan.toml are relative to it), so the installed guard
wheel evaluates it with nothing else installed: the camera models' directories as `guard serve`
loads them (guard_examples.camera_guard.write_directory, with the served per-camera baselines unless
`--factory`), and the real footage as JPEG frames, quality 90, as a camera sends them, one folder
per clip and each clip a camera ([data] cameras = true): a camera's first 50 frames warm its
baseline up and are not judged. guard evaluate calibrates each model on the plan's fit and
calibration frames, then attacks the test frames:

- `hide` on YOLOv3-tiny: an L-inf PGD on the 8-bit grid that drives every person score down; a frame
  counts when a person the clean frame showed is gone;
- `flip` on MobileNetV2: an untargeted PGD that changes the top-1;

each at 2, 4 and 8/255. The calibration protocols are the plan's data:

- `one-clip` (protocol A): fit and calibration on bikes.mp4 (alternate frames of its first half),
  test on the other clips, scenes the guard never saw;
- `time-split` (protocol B): every clip's first half fits and calibrates, its second half, after a
  gap, is judged.

`--conditions dusk gain ...` adds `[data] conditions`: every test camera is judged again under each
simulated condition (guard.tools.evaluation.image_conditions), after a warm-up on its frames as they
were. The poisoning bound stays with guard_examples.camera_baselines, which drives the server's
baseline objects directly.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import tomlkit
from tqdm import tqdm

from guard.api import CONDITIONS, encode_jpeg
from guard_examples.camera import DEFAULT_ROOT, ensure_built
from guard_examples.camera_guard import WARMUP, write_directory
from guard_examples.footage import video_frames
from guard_examples.paths import WORKSPACE

CLIPS = ("bikes", "carphone", "bigbuckbunny")
CALIBRATION_CLIP = "bikes"
PROTOCOLS = ("one-clip", "time-split")
MODELS = ("yolov3_tiny", "mobilenet_v2")
RULES = {"yolov3_tiny": "hide", "mobilenet_v2": "flip"}
EPSILONS = (2 / 255, 4 / 255, 8 / 255)
GAP = 5  # frames left out between a clip's calibrating and judged parts: no near-duplicate neighbours
JPEG_QUALITY = 90
STEPS = 40
QUICK = {"frames": 12, "steps": 10, "epsilons": (8 / 255,)}


def _frames(clip: str, start: int, stop: int) -> list[tuple[int, np.ndarray]]:
    """(index, frame) for frames start..stop-1 of a packaged clip."""
    return list(zip(range(start, stop), video_frames(clip, start=start, limit=stop - start)))


def _even(items: list, count: int | None) -> list:
    """`count` items spread evenly over `items` (all of them without a count)."""
    if count is None or count >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def split_frames(protocol: str, limit: int | None = None) -> dict[str, list[tuple[str, np.ndarray]]]:
    """{split: [(file stem, RGB frame)]} for fit, calibration and test under a protocol; `limit`
    frames at most per split and clip (spread evenly)."""
    splits: dict[str, list[tuple[str, np.ndarray]]] = {"fit": [], "calibration": [], "test": []}
    lengths = {clip: sum(1 for _ in video_frames(clip)) for clip in CLIPS}
    for clip in CLIPS:
        half = lengths[clip] // 2
        calibrating = protocol == "time-split" or clip == CALIBRATION_CLIP
        if calibrating:
            first = _frames(clip, 0, half)
            splits["fit"] += [(f"{clip}_{i:04d}", f) for i, f in _even(first[0::2], limit)]
            splits["calibration"] += [(f"{clip}_{i:04d}", f) for i, f in _even(first[1::2], limit)]
        if protocol == "time-split":
            judged = _frames(clip, half + GAP, lengths[clip])
        elif clip != CALIBRATION_CLIP:
            judged = _frames(clip, 0, lengths[clip])
        else:
            continue
        splits["test"] += [(f"{clip}_{i:04d}", f) for i, f in _even(judged, limit)]
    return splits


def write_plan(
    out: Path,
    protocol: str = "one-clip",
    models: tuple[str, ...] = MODELS,
    quick: bool = False,
    models_root: Path = DEFAULT_ROOT,
    per_camera: bool = True,
    conditions: tuple[str, ...] = (),
) -> Path:
    """Write the camera plan and every file it names under `out`; returns plan.toml. `per_camera`:
    the models keep the served per-camera baselines and each clip's frames are one camera's;
    `conditions`: simulated conditions the test cameras are also judged under."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if out.exists() and any(out.iterdir()) and not (out / "plan.toml").is_file():
        raise ValueError(f"{out} holds files but no plan.toml: name an empty directory or an earlier camera plan")
    built = ensure_built(models_root, models)
    for earlier in (out / "models", out / "frames"):  # an earlier plan's: replaced, not merged
        if earlier.exists():
            shutil.rmtree(earlier)
    for name in models:
        write_directory(name, built[name], out / "models", warmup=WARMUP if per_camera else None)
    splits = split_frames(protocol, QUICK["frames"] if quick else None)
    data: dict[str, object] = {}
    for split, frames in splits.items():
        folders: list[str] = []
        for stem, rgb in tqdm(frames, desc=f"camera plan: {split} frames", unit="frame"):
            # Per camera, a folder per clip (the folder names the camera); else one folder a split.
            relative = f"frames/{split}/{stem.rsplit('_', 1)[0]}" if per_camera else f"frames/{split}"
            if relative not in folders:
                folders.append(relative)
                (out / relative).mkdir(parents=True)
            (out / relative / f"{stem}.jpg").write_bytes(encode_jpeg(rgb, JPEG_QUALITY))
        data[split] = folders if per_camera else folders[0]
    if per_camera:
        data["cameras"] = True
    if conditions:
        data["conditions"] = list(conditions)
    epsilons = QUICK["epsilons"] if quick else EPSILONS
    plan = {
        "notes": [
            f"Camera models evaluated under protocol `{protocol}` (guard_examples.camera_plan): "
            + (
                f"calibrated on {CALIBRATION_CLIP}.mp4, judged on "
                + ", ".join(f"{c}.mp4" for c in CLIPS if c != CALIBRATION_CLIP)
                if protocol == "one-clip"
                else f"every clip's first half calibrates, its second half (after {GAP} frames) is judged"
            )
            + f"; frames sent as the camera sent them (JPEG quality {JPEG_QUALITY}), then as guard evaluate sends "
            "image frames (see its note).",
            (
                f"Per-camera baselines on, as served: each clip is a camera whose first {WARMUP} frames warm "
                "its baseline up and are not judged."
                if per_camera
                else "Per-camera baselines off: the factory thresholds."
            ),
        ],
        "data": data,
        "models": [{"name": name, "model": f"models/{name}"} for name in models],
        "attacks": [
            {
                "name": "pgd",
                "rule": rule,
                "eps": [float(e) for e in epsilons],
                "params": {"steps": QUICK["steps"] if quick else STEPS},
            }
            for rule in sorted({RULES[name] for name in models})
        ],
    }
    path = out / "plan.toml"
    path.write_text(tomlkit.dumps(plan))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WORKSPACE / "build" / "camera-plan")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="one-clip")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['frames']} frames per split and clip, 8/255 only")
    parser.add_argument(
        "--factory",
        action="store_true",
        help="without per-camera baselines (the factory thresholds); --quick implies it",
    )
    parser.add_argument(
        "--conditions", nargs="+", choices=tuple(CONDITIONS), default=[], help="simulated conditions to judge under"
    )
    args = parser.parse_args(argv)
    try:
        per_camera = not (args.factory or args.quick)  # a quick plan has fewer frames than a warm-up
        models, conditions = tuple(args.models), tuple(args.conditions)
        path = write_plan(args.out, args.protocol, models, args.quick, per_camera=per_camera, conditions=conditions)
    except ValueError as exc:
        raise SystemExit(f"camera plan: {exc}") from None
    print(f"camera plan: {path} (run: guard evaluate --plan {path})")


if __name__ == "__main__":
    main()
