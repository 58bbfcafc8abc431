"""Clean frames for image models: a plan's [data] splits named as folders of images and/or video
files, decoded to RGB uint8 [H, W, 3] frames by guard.tools.clean_data (the one copy of the image
and video helpers).

    [data]
    fit = ["frames/fit", "street.mp4"]     # a folder, a video, or a list of them
    calibration = "frames/calibration"
    test = "frames/test"
    video_stride = 5                        # optional: every 5th frame of a video (default 1)
    max_frames = 200                        # optional: at most this many frames per source
    cameras = true                          # optional: each source is a camera (default false)
    conditions = ["dusk", "gain"]           # optional: the test frames also judged under these
    ramp_hours = 1.0                        # optional: simulated hours each camera's ramp spans (0: none)

A folder contributes its .jpg, .jpeg and .png files in name order; a video its frames in time order.
With `cameras = true` each source (a folder, a video) is one camera whose id is its name without
suffix (`frames/test/lobby` and `frames/fit/lobby` are both camera `lobby`): requests carry that
`camera_id`, so a model with per-camera baselines is measured as it is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.protocol.settings import TableReader
from guard.tools.clean_data import IMAGE_SUFFIXES, VIDEO_SUFFIXES, decode_image, decode_video
from guard.tools.evaluation.conditions import CONDITIONS


@dataclass(frozen=True)
class FrameSplit:
    """One split's clean frames, each with the source it came from (for the report)."""

    sources: tuple[Path, ...]
    frames: tuple[np.ndarray, ...]
    """RGB uint8 [H, W, 3], any size each."""
    names: tuple[str, ...]
    """Per frame: `file` for an image, `video#index` for a video frame."""
    cameras: tuple[str, ...] = ()
    """Per frame: the camera (its source's name without suffix)."""
    per_camera: bool = False
    """[data] cameras: whether requests carry each frame's camera as `camera_id`."""
    conditions: tuple[str, ...] = ()
    """[data] conditions: simulated conditions the test frames are also judged under
    (guard.tools.evaluation.image_conditions)."""
    ramp_hours: float = 1.0
    """[data] ramp_hours: the simulated hours a condition's ramp spans on each camera's baseline
    clock (guard.tools.evaluation.baseline_clock); 0 keeps the wall clock."""

    def __len__(self) -> int:
        return len(self.frames)


def names_frames(value: object) -> bool:
    """Whether a [data] split value names frames (a folder, a video, a list) rather than an .npz."""
    return not (isinstance(value, str) and value.endswith(".npz"))


def _folder(reader: TableReader, key: str, path: Path, limit: int | None) -> list[tuple[str, np.ndarray]]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise reader.fail(key, f"a folder holding {', '.join(IMAGE_SUFFIXES)} images", str(path))
    found = []
    for file in files:
        try:
            found.append((file.name, decode_image(file)))
        except OSError as exc:  # Pillow's UnidentifiedImageError is an OSError
            raise reader.fail(key, f"images that decode ({file.name}: {exc})", str(path)) from None
    return found


def _video(reader: TableReader, key: str, path: Path, stride: int, limit: int | None) -> list[tuple[str, np.ndarray]]:
    try:
        frames = list(decode_video(path, step=stride, limit=limit))
    except ImportError:
        raise reader.fail(key, "a video PyAV can read (pip install 'guard[video]')", str(path)) from None
    except Exception as exc:  # noqa: BLE001 - PyAV raises its own error family for unreadable files
        raise reader.fail(key, f"a video PyAV can read ({type(exc).__name__}: {exc})", str(path)) from None
    if not frames:
        raise reader.fail(key, "a video with at least one decodable frame", str(path))
    return [(f"{path.name}#{i * stride}", frame) for i, frame in enumerate(frames)]


def load_frame_split(
    reader: TableReader,
    key: str,
    stride: int = 1,
    limit: int | None = None,
    per_camera: bool = False,
    conditions: tuple[str, ...] = (),
    ramp_hours: float = 1.0,
) -> FrameSplit:
    """The frames `[data] key` names (paths relative to the plan); every problem names the key."""
    value = reader.get(key, object, expected="a folder of images, a video file, or a list of them")
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) for v in values):
        raise reader.fail(key, "a folder of images, a video file, or a non-empty list of them", value)
    sources: list[Path] = []
    found: list[tuple[str, np.ndarray]] = []
    cameras: list[str] = []
    for i, name in enumerate(values):
        item = key if not isinstance(value, list) else f"{key}[{i}]"
        path = reader.directory / name
        if path.is_dir():
            found += _folder(reader, item, path, limit)
        elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            found += _video(reader, item, path, stride, limit)
        else:
            raise reader.fail(
                item,
                f"an existing folder of images or a video ({', '.join(VIDEO_SUFFIXES)}) in {reader.directory}",
                name,
            )
        sources.append(path)
        cameras += [path.stem] * (len(found) - len(cameras))
    return FrameSplit(
        tuple(sources),
        tuple(f for _, f in found),
        tuple(n for n, _ in found),
        tuple(cameras),
        per_camera,
        conditions,
        ramp_hours,
    )


def judged_rows(cameras: Sequence[str], warmup: int) -> np.ndarray:
    """Test rows a camera judges: all but each camera's first `warmup` frames (its baseline warms up
    on them, as a deployment's camera does), in order."""
    seen: dict[str, int] = {}
    rows = []
    for i, camera in enumerate(cameras):
        seen[camera] = seen.get(camera, 0) + 1
        if seen[camera] > warmup:
            rows.append(i)
    return np.array(rows, dtype=np.int64)


def read_frame_data(reader: TableReader, keys: tuple[str, ...]) -> dict[str, FrameSplit]:
    """Every split of an image plan's [data] table."""
    reader.unknown((*keys, "video_stride", "max_frames", "cameras", "conditions", "ramp_hours"))
    stride = reader.positive("video_stride", 1)
    limit = reader.positive("max_frames", 0, allow_zero=True) or None
    per_camera = reader.get("cameras", bool, False)
    conditions = _conditions(reader)
    ramp_hours = reader.get("ramp_hours", float, 1.0, "a number of hours, 0 or more")
    if not 0 <= ramp_hours < float("inf"):
        raise reader.fail("ramp_hours", "a number of hours, 0 or more", ramp_hours)
    return {key: load_frame_split(reader, key, stride, limit, per_camera, conditions, ramp_hours) for key in keys}


def _conditions(reader: TableReader) -> tuple[str, ...]:
    """[data] conditions: distinct names of simulated conditions (conditions.CONDITIONS)."""
    value = reader.get("conditions", object, [], "a list of condition names")
    names = tuple(CONDITIONS)
    if (
        not isinstance(value, list)
        or not all(isinstance(v, str) and v in CONDITIONS for v in value)
        or len(set(value)) != len(value)
    ):
        raise reader.fail("conditions", f"a list of distinct condition names ({', '.join(names)})", value)
    return tuple(value)
