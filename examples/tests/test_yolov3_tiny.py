"""yolov3_tiny: the torch port and its ONNX export agree, OpenCV agrees, and people are found on a real image."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from guard_examples import yolo

pytestmark = pytest.mark.usefixtures("camera_packages")


@pytest.fixture(scope="module")
def model():
    return yolo.load_yolov3_tiny()


@pytest.fixture(scope="module")
def session(camera_models):
    return ort.InferenceSession(str(camera_models["yolov3_tiny"] / "model.onnx"), providers=["CPUExecutionProvider"])


def test_contract_fixed_size_decoded_rows_and_a_free_batch(camera_models, session):
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(float)", [3, 416, 416])
    assert (out.name, out.type, out.shape[1:]) == ("detections", "tensor(float)", [2535, 85])
    x = np.random.default_rng(0).random((3, 3, 416, 416), dtype=np.float32)
    d = session.run(None, {"images": x})[0]
    assert d.shape == (3, 2535, 85)
    assert (d[..., 4:] >= 0).all() and (d[..., 4:] <= 1).all()  # objectness and class scores after sigmoid
    names = (camera_models["yolov3_tiny"] / "coco.names").read_text().split("\n")
    names = [n for n in names if n]
    assert len(names) == 80 and names[0] == "person" and "car" in names and "bus" in names
    pre = json.loads((camera_models["yolov3_tiny"] / "preprocess.json").read_text())
    assert (pre["resize"], pre["height"], pre["width"], pre["pad_value"]) == ("letterbox", 416, 416, 0.5)


def test_torch_port_equals_the_onnx_export(model, session, person_image):
    from guard_examples import footage

    frames = [person_image[1], footage.skimage_photo("astronaut")]
    x = np.stack([yolo.letterbox(f)[0] for f in frames])
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    exported = session.run(None, {"images": x})[0]
    assert np.abs(ours[..., :4] - exported[..., :4]).max() < 1e-2  # input pixels; w, h pass through exp
    assert np.abs(ours[..., 4:] - exported[..., 4:]).max() < 1e-4


def test_torch_port_equals_opencv_darknet(model, person_image):
    from guard_examples.yolov3_tiny import opencv_check

    diffs = opencv_check(model, yolo.letterbox(person_image[1])[0][None])
    assert diffs["boxes_objectness"] < 1e-4 and diffs["class_scores"] < 1e-4, diffs
    assert diffs["raw_heads"] < 1e-2, diffs


def test_people_are_found_on_a_real_image(session, person_image):
    name, frame = person_image
    x, box = yolo.letterbox(frame)
    found = yolo.postprocess(session.run(None, {"images": x[None]})[0][0])
    people = [d for d in found if d.label == 0]
    assert len(people) >= (3 if name == "bus" else 1), [(d.label, d.score) for d in found]
    frame_boxes = box.to_frame(np.array([d.box for d in people]))
    h, w = frame.shape[:2]
    assert (frame_boxes[:, [0, 2]].mean(1) > 0).all() and (frame_boxes[:, [0, 2]].mean(1) < w).all()
    assert (frame_boxes[:, [1, 3]].mean(1) > 0).all() and (frame_boxes[:, [1, 3]].mean(1) < h).all()


def test_the_torch_module_is_differentiable_for_patch_attacks(model, person_image):
    x = torch.from_numpy(yolo.letterbox(person_image[1])[0][None]).requires_grad_(True)
    detections = model(x)
    person_score = (detections[..., 4] * detections[..., 5]).max()
    person_score.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_postprocess_suppresses_overlapping_boxes_of_one_class():
    rows = np.zeros((3, 85), np.float32)
    rows[:, :4] = [[100, 100, 50, 80], [102, 101, 50, 80], [300, 300, 40, 40]]
    rows[:, 4] = [0.9, 0.8, 0.7]
    rows[:, 5] = 1.0  # person
    found = yolo.postprocess(rows, conf=0.25, iou=0.45)
    assert [round(d.score, 2) for d in found] == [0.9, 0.7]
