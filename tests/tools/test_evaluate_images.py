"""Image plans for `guard evaluate --plan`, short of a full evaluation: a bad plan value is one error
naming its key, image plans refuse npz splits and tensor models, and the frames a plan sends reach the
model exactly as the attack left them (a center-crop model's included). The model directory, frames
(folders of PNG and JPEG, and a video) and plans built here are shared with the other image
evaluation tests.

The detector is built here: a tiny hand-set network on a 4 x 4 grid of 8-pixel cells of a 32 x 32
frame (yolo format, 16 anchors, 2 classes). A cell whose mean colour is saturated red is a class 0
("person") box, saturated green a class 1 box; grey noise is nothing. How far PGD must move a red
cell to hide it is known from the weights, so the tests can say which budgets must fail and which
must succeed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

CELL, GRID, SIDE = 8, 4, 32  # the model's 32 x 32 input: 4 x 4 cells of 8 pixels
SOURCE = 64  # frames on disk are twice the model's size: the gateway's resize brings them down
SMALL, LARGE = 2 / 255, 64 / 255  # hiding a red cell needs ~0.1 per channel (see TinyDetector)
CONFIG = """\
name = "tiny_detector"
policy = "enforce"
target_fpr = 0.05
output_kind = "detection"
logits_output = "detections"

[[inputs]]
name = "image"
datatype = "BYTES"
shape = []

[[outputs]]
name = "detections"
datatype = "FP32"
shape = [16, 7]

[preprocess]
kind = "images"
output = "input"
height = 32
width = 32

[boxes]
format = "yolo"
score_threshold = 0.25
iou_threshold = 0.45

[[detectors]]
name = "box_consistency"
type = "box_consistency"

[[detectors]]
name = "patch"
type = "patch_occlusion"

[batching]
max_batch_size = 16
"""


class TinyDetector(nn.Module):
    """Objectness sigmoid(8 r + 8 g - 16 b - 4) and class softmax(10 (r - g), 10 (g - r)) of each
    cell's mean colour; the box is the cell. A red cell (0.75-0.95, 0.1, 0.1) scores 0.77-0.94;
    lowering r and g and raising b by e lowers the logit by 32 e, so hiding it below the 0.25
    threshold (and the attack's margin at half of it) takes e of about 0.1-0.15: 2/255 cannot,
    64/255 always can."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(CELL)
        self.obj, self.cls, self.box = nn.Conv2d(3, 1, 1), nn.Conv2d(3, 2, 1), nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.obj.weight[:] = torch.tensor([8.0, 8.0, -16.0]).view(1, 3, 1, 1)
            self.obj.bias[:] = -4.0
            self.cls.weight[:] = torch.tensor([[10.0, -10.0, 0.0], [-10.0, 10.0, 0.0]]).view(2, 3, 1, 1)
            self.cls.bias.zero_()
            self.box.weight.zero_()
            self.box.bias.zero_()
        ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        size = torch.full_like(xs, CELL)
        self.register_buffer("grid", torch.stack([(xs + 0.5) * CELL, (ys + 0.5) * CELL, size, size]).float()[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(x)
        out = torch.cat([self.box(h) + self.grid, torch.sigmoid(self.obj(h)), torch.softmax(self.cls(h), dim=1)], 1)
        return out.reshape(-1, 7, GRID * GRID).transpose(1, 2)  # [N, 16 anchors, 5 + 2]


def write_model(directory: Path) -> Path:
    directory.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TinyDetector().eval(),
            (torch.zeros(1, 3, SIDE, SIDE),),
            str(directory / "model.onnx"),
            dynamo=False,
            input_names=["input"],
            output_names=["detections"],
            dynamic_axes={"input": {0: "n"}, "detections": {0: "n"}},
        )
    (directory / "config.toml").write_text(CONFIG)
    return directory


def frame(rng: np.random.Generator, red: list[int], green: list[int]) -> np.ndarray:
    """A SOURCE x SOURCE RGB frame of grey noise with saturated squares in the given cells."""
    pixels = rng.uniform(0.3, 0.6, (SOURCE, SOURCE, 1)).repeat(3, axis=2)
    scale = SOURCE // GRID
    for cells, colour in ((red, 0), (green, 1)):
        for cell in cells:
            y, x = divmod(cell, GRID)
            patch = np.full(3, 0.1)
            patch[colour] = rng.uniform(0.75, 0.95)
            pixels[y * scale : (y + 1) * scale, x * scale : (x + 1) * scale] = patch
    return (pixels * 255).round().astype(np.uint8)


def write_frames(folder: Path, frames: list[np.ndarray], suffix: str = ".png") -> None:
    folder.mkdir(parents=True)
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(folder / f"{i:03d}{suffix}", quality=95)


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = SOURCE, SOURCE, "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# Test frames: (red cells, green cells). Eight carry a person, four only a green box, four nothing.
TEST = [([i % 16], []) for i in range(0, 16, 2)] + [([], [i]) for i in (1, 6, 11, 12)] + [([], [])] * 4
PERSONS = sum(1 for red, _ in TEST if red)
ATTACKS = f"""
[[attacks]]
name = "pgd"
rule = "hide"
eps = [{SMALL!r}, {LARGE!r}]
params = {{ steps = 8 }}

[[attacks]]
name = "pgd"
rule = "appear"
class = 0
eps = {LARGE!r}
params = {{ steps = 8 }}

[[attacks]]
name = "pgd"
rule = "move"
iou = 0.5
eps = {LARGE!r}
params = {{ steps = 8 }}
"""


def write_plan(root: Path, attacks: str = ATTACKS, extra_model: str = "") -> Path:
    """The model directory, fit / calibration / test frames and the plan, under root."""
    rng = np.random.default_rng(0)
    if not (root / "tiny_detector").exists():
        write_model(root / "tiny_detector")

        def clutter() -> np.ndarray:
            cells = rng.permutation(16)
            return frame(rng, list(cells[: rng.integers(0, 2)]), list(cells[2 : 2 + rng.integers(0, 2)]))

        write_frames(root / "fit", [clutter() for _ in range(8)])
        write_video(root / "fit.mp4", [clutter() for _ in range(6)])
        write_frames(root / "calibration_png", [clutter() for _ in range(20)])
        write_frames(root / "calibration_jpeg", [clutter() for _ in range(20)], ".jpg")
        write_frames(root / "test", [frame(rng, red, green) for red, green in TEST])
    plan = root / "plan.toml"
    plan.write_text(
        '[data]\nfit = ["fit", "fit.mp4"]\ncalibration = ["calibration_png", "calibration_jpeg"]\ntest = "test"\n\n'
        '[[models]]\nname = "detector"\nmodel = "tiny_detector"\n' + extra_model + attacks
    )
    return plan


def _per_camera_plan(root: Path) -> Path:
    """The tiny detector with per-camera baselines (3 warm-up frames) and the test frames as two
    cameras of eight frames each."""
    plan = write_plan(root, f'\n[[attacks]]\nname = "pgd"\nrule = "hide"\neps = {LARGE!r}\nparams = {{ steps = 4 }}\n')
    config = root / "tiny_detector" / "config.toml"
    if "[cameras.baseline]" not in config.read_text():
        config.write_text(
            config.read_text() + "\n[cameras]\nper_camera_metrics = true\n\n[cameras.baseline]\nwarmup_frames = 3\n"
        )
        for name, files in (
            ("cam_a", sorted((root / "test").iterdir())[:8]),
            ("cam_b", sorted((root / "test").iterdir())[8:]),
        ):
            (root / name).mkdir()
            for file in files:
                file.rename(root / name / file.name)
    plan.write_text(plan.read_text().replace('test = "test"', 'test = ["cam_a", "cam_b"]'))
    return plan


@pytest.mark.parametrize(
    "attacks, extra_model, key",
    [
        ('[[attacks]]\nname = "pgd"\nrule = "vanish"\neps = 0.1\n', "", "attacks[0].rule"),
        ('[[attacks]]\nname = "pgd"\nrule = "flip"\neps = 0.1\n', "", "attacks[0].rule"),
        ('[[attacks]]\nname = "pgd"\nrule = "hide"\nclass = 2\neps = 0.1\n', "", "attacks[0].class"),
        ('[[attacks]]\nname = "pgd"\nrule = "hide"\neps = 0.001\n', "", "attacks[0].eps"),
        ('[[attacks]]\nname = "pgd"\nrule = "hide"\niou = 1.5\neps = 0.1\n', "", "attacks[0].iou"),
        ('[[attacks]]\nname = "cw"\nrule = "hide"\neps = 0.1\n', "", "attacks[0].name"),
        (
            '[[attacks]]\nname = "pgd"\nrule = "hide"\neps = 0.1\nparams = { restarts = 2 }\n',
            "",
            "attacks[0].params.restarts",
        ),
        ("", 'onnx = "tiny_detector/model.onnx"\n', "models[0].onnx"),
    ],
)
def test_a_bad_image_plan_value_is_one_error_naming_its_key(tmp_path, caplog, attacks, extra_model, key):
    from guard.tools.cli import main

    plan = write_plan(tmp_path, attacks, extra_model)
    assert main(["evaluate", "--plan", str(plan), "--report-dir", str(tmp_path / "r")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert f"{plan.resolve()}: key '{key}'" in errors[0], errors[0]
    assert not (tmp_path / "r").exists()  # refused before anything slow started


def test_image_plans_refuse_npz_splits_and_tensor_models(tmp_path):
    from guard.protocol.errors import ConfigError
    from guard.tools.evaluation.plan import load_plan

    plan = write_plan(tmp_path, "")
    plan.write_text(plan.read_text().replace('test = "test"', 'test = "test.npz"'))
    with pytest.raises(ConfigError, match=r"key 'data.test': expected frames like the other splits"):
        load_plan(plan)
    (tmp_path / "tensor").mkdir()
    tensor = CONFIG.replace('name = "tiny_detector"', 'name = "tensor"').replace(
        'name = "image"\ndatatype = "BYTES"\nshape = []',
        'name = "input"\ndatatype = "FP32"\nshape = [3, 32, 32]\nrange = [0.0, 1.0]\nlayout = "NCHW"',
    )
    (tmp_path / "tensor" / "config.toml").write_text(
        tensor.replace('[preprocess]\nkind = "images"\noutput = "input"\nheight = 32\nwidth = 32\n', "")
    )
    (tmp_path / "tensor" / "model.onnx").write_bytes((tmp_path / "tiny_detector" / "model.onnx").read_bytes())
    plan = write_plan(tmp_path, "")
    plan.write_text(plan.read_text().replace('model = "tiny_detector"', 'model = "tensor"'))
    with pytest.raises(ConfigError, match=r"key 'models\[0\].model': expected a model whose one input is BYTES"):
        load_plan(plan)


def test_frames_reach_the_model_exactly_as_the_attack_left_them(tmp_path):
    """Views at the model's size, sent as PNG, come out of the gateway's own preprocessor bit for
    bit: a one-level perturbation survives (JPEG, or a view the gateway resizes again, would not)."""
    from guard.tools.evaluation.plan import load_plan

    plan = load_plan(write_plan(tmp_path, ""))
    image = plan.images[0].image
    views = image.views(plan.frames("test").frames)
    assert views.shape == (len(TEST), SIDE, SIDE, 3) and views.dtype == np.uint8
    nudged = np.clip(views.astype(int) + np.random.default_rng(1).integers(-1, 2, views.shape), 0, 255)
    nudged = nudged.astype(np.uint8)
    requests = [np.array([data], dtype=object) for data in image.encode(nudged)]
    prepared = image.preprocessor.prepare(requests, torch.device("cpu"))
    assert not prepared.failed and torch.equal(prepared.rows, image.as_tensor(nudged))


def test_a_center_crop_model_is_sent_its_uncropped_square_and_attacked_through_its_crop(tmp_path):
    """A center-crop model's frames go as the square its resize makes (shorter side at
    resize_shorter): the gateway resizes nothing, cuts the centre, and the model sees bit for bit the
    crop the attack's torch model cuts from the same view."""
    from guard.tools.evaluation.plan import load_plan

    plan_path = write_plan(tmp_path, "")
    config = tmp_path / "tiny_detector" / "config.toml"
    config.write_text(
        config.read_text().replace("width = 32\n", 'width = 32\nresize = "center-crop"\nresize_shorter = 40\n')
    )
    image = load_plan(plan_path).images[0].image
    wide = np.random.default_rng(2).integers(0, 256, (50, 90, 3), dtype=np.uint8)  # not square, not 40
    views = image.views([wide, wide[:, ::-1]])
    assert views.shape == (2, 40, 40, 3)
    requests = [np.array([data], dtype=object) for data in image.encode(views)]
    prepared = image.preprocessor.prepare(requests, torch.device("cpu"))
    net = image.torch_model()
    assert not prepared.failed and net.crop == (4, 4, SIDE, SIDE)
    assert torch.equal(prepared.rows, image.as_tensor(views)[..., 4:36, 4:36])
    with torch.no_grad():  # the attack's model is the served model on the crop
        got = net(image.as_tensor(views))
        want = net.net.run((prepared.rows - net.mean) / net.std, [net.output])[0]
    assert torch.equal(got, want)
