"""guard_examples.camera_guard's calibration sets: the default calibrates on every packaged camera,
each a camera of its own (a montage's shots apart), and a repository calibrated on one set is stale
for the other. Calibrating itself is tested where a repository is built (the camera evaluation's
test, tests/tools)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guard_examples import camera_guard, footage

pytestmark = pytest.mark.usefixtures("camera_packages")


@pytest.fixture(scope="module")
def fleet():
    return camera_guard.calibration_set(camera_guard.FLEET)


def test_the_fleet_set_is_every_packaged_camera_each_alone(fleet):
    cameras = fleet.cameras.tolist()
    bikes = list(footage.video_frames("bikes"))
    shots = footage.shots("bikes", bikes)
    wanted = {
        "vtest": len(list(footage.video_frames("vtest", step=3))),
        "carphone": len(list(footage.video_frames("carphone"))),
        "bigbuckbunny": len(list(footage.video_frames("bigbuckbunny"))),
        **{f"bikes/{i}": len(shot) for i, shot in enumerate(shots)},
    }
    counted = {name: cameras.count(name) for name in dict.fromkeys(cameras)}
    assert counted == wanted
    assert len(shots) == len(footage.CUTS["bikes"]) + 1
    # Each camera's frames stay together and in time order: its warm-up is its first frames.
    starts = [cameras.index(name) for name in counted]
    assert starts == sorted(starts) and all(
        cameras[s : s + n] == [name] * n for (name, n), s in zip(counted.items(), starts)
    )
    assert fleet.rows == len(cameras) == sum(wanted.values())
    # the frames are the clips' frames, sent as a camera sends them (JPEG)
    first_shot = [camera_guard.encode_jpeg(f) for f in shots[1][:2]]
    at = cameras.index("bikes/1")
    assert [bytes(j) for j in fleet.inputs["image"][at : at + 2]] == first_shot


def test_the_one_clip_set_is_bikes_first_frames_as_one_camera():
    one = camera_guard.calibration_set(camera_guard.ONE_CLIP)
    assert one.rows == camera_guard.ONE_CLIP_FRAMES
    assert set(one.cameras.tolist()) == {camera_guard.CALIBRATION_CLIP}
    with pytest.raises(ValueError, match="calibration set 'bikes'"):
        camera_guard.calibration_set("bikes")


def test_a_directory_built_on_one_set_is_stale_for_the_other(tmp_path):
    built = tmp_path / "built"
    built.mkdir()
    (built / "build.json").write_text(json.dumps({"model": "m"}))
    directory = tmp_path / "repository" / "m"
    directory.mkdir(parents=True)
    (directory / "config.toml").write_text("")
    recorded = camera_guard.fingerprint(built, camera_guard.described(camera_guard.ONE_CLIP))
    (directory / "build.json").write_text(json.dumps(recorded))
    assert camera_guard.is_current(directory, recorded)
    assert not camera_guard.is_current(
        directory, camera_guard.fingerprint(built, camera_guard.described(camera_guard.FLEET))
    )
    assert camera_guard.described(camera_guard.FLEET) != camera_guard.described(camera_guard.ONE_CLIP)
    assert np.all([camera in camera_guard.described(camera_guard.FLEET) for camera in camera_guard.CAMERAS])
