"""centerface: the renamed contract, any size and batch, and faces found on real images."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from guard_examples import centerface, footage

pytestmark = pytest.mark.usefixtures("camera_packages")


@pytest.fixture(scope="module")
def session(camera_models):
    return ort.InferenceSession(str(camera_models["centerface"] / "model.onnx"), providers=["CPUExecutionProvider"])


def test_contract_named_outputs_any_size_multiple_of_32_and_a_free_batch(camera_models, session):
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape) == ("input", "tensor(float)", ["N", 3, "H", "W"])
    assert [o.name for o in session.get_outputs()] == ["heatmap", "scale", "offset", "landmarks"]
    for batch, h, w in ((1, 480, 640), (2, 160, 224)):
        x = np.random.default_rng(0).uniform(0, 255, (batch, 3, h, w)).astype(np.float32)
        shapes = [o.shape for o in session.run(None, {"input": x})]
        assert shapes == [(batch, c, h // 4, w // 4) for c in (1, 2, 2, 10)]
    pre = json.loads((camera_models["centerface"] / "preprocess.json").read_text())
    assert pre["height"] % 32 == 0 and pre["width"] % 32 == 0 and pre["std"] == [1 / 255]


def test_finds_the_astronauts_face(session):
    rgb = footage.skimage_photo("astronaut")
    faces = centerface.detect(session, rgb)
    assert len(faces) == 1 and faces[0].score > 0.8
    x1, y1, x2, y2 = faces[0].box
    # Her face is in the upper middle of the photo, some 60-120 px across.
    assert 100 < (x1 + x2) / 2 < 300 and 40 < (y1 + y2) / 2 < 200 and 50 < x2 - x1 < 160
    assert all(x1 <= px <= x2 and y1 <= py <= y2 for px, py in faces[0].landmarks)


def test_finds_the_face_in_the_car_and_at_the_guards_size(session):
    frame = footage.video_frame("carphone", 60)
    assert len(centerface.detect(session, frame)) == 1
    assert len(centerface.detect(session, frame, centerface.GUARD_HEIGHT, centerface.GUARD_WIDTH)) == 1


def test_no_face_on_a_cat(session):
    assert centerface.detect(session, footage.skimage_photo("chelsea")) == []
