"""`guard evaluate --plan` on an image plan: a model directory whose input is BYTES frames and whose
output kind is detection, frames from folders (PNG and JPEG) and a video, attacks judged by the
hide / appear / move rules, all through a real gateway on port 0 and the real CLI entry.

The detector is built here: a tiny hand-set network on a 4 x 4 grid of 8-pixel cells of a 32 x 32
frame (yolo format, 16 anchors, 2 classes). A cell whose mean colour is saturated red is a class 0
("person") box, saturated green a class 1 box; grey noise is nothing. How far PGD must move a red
cell to hide it is known from the weights, so the tests can say which budgets must fail and which
must succeed.
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[int, dict, Path]:
    """`guard evaluate --plan` once, through the CLI's own entry (a real gateway on port 0)."""
    pytest.importorskip("matplotlib")
    from guard.tools.cli import main

    root = tmp_path_factory.mktemp("image-plan")
    plan = write_plan(root)
    report = root / "report"
    code = main(["evaluate", "--plan", str(plan), "--report-dir", str(report), "--workdir", str(root / "work")])
    return code, json.loads((report / "results.json").read_text()), report


def _rows(results: dict) -> dict[str, dict]:
    return {row["key"]: row for row in results["rows"]}


def test_the_evaluation_repository_serves_the_directory_under_the_plans_name_under_flag(evaluated):
    """The copy a plain `guard serve --repository` (or --connect) would serve: the plan's name, policy
    flag whatever the directory said (enforce would refuse flagged frames and return no boxes)."""
    import tomllib

    _, _, report = evaluated
    config = tomllib.loads((report.parent / "work" / "repository" / "detector" / "config.toml").read_text())
    assert (config["name"], config["policy"]) == ("detector", "flag")
    assert all("threshold" in d for d in config["detectors"])  # calibrated where it is served


def test_hiding_succeeds_only_on_frames_where_the_person_was_found_and_only_with_budget(evaluated):
    code, results, _ = evaluated
    assert code == 0
    rows = _rows(results)
    small, large = rows[f"hide_pgd_eps{SMALL:g}"], rows[f"hide_pgd_eps{LARGE:g}"]
    # Eligible: the test frames on which the served model found a person (all that carry one).
    assert small["eligible"] == large["eligible"] == PERSONS and large["n"] == len(TEST)
    assert small["successful"] == 0 and small["asr"] == 0.0  # 2 levels cannot move a cell's logit by 2
    assert large["successful"] == PERSONS and large["asr"] == 1.0
    assert large["surrogate_asr"] == 1.0  # the same success on the model run as torch (white-box)
    assert large["rule"] == {"name": "hide", "class": 0, "iou": 0.5}


def test_each_row_with_eligible_frames_has_an_example_sheet_of_them(evaluated):
    from PIL import Image

    from guard.tools.evaluation.sheets import TILE

    _, results, report = evaluated
    rows = _rows(results)
    for key in (f"hide_pgd_eps{SMALL:g}", f"hide_pgd_eps{LARGE:g}"):
        sheet = Image.open(report / rows[key]["examples"])
        # Two tiles a frame (clean, attacked), one frame a row: four of the eligible frames.
        assert sheet.size == (2 * TILE, 4 * TILE), key
    # The large budget's sheet shows successful frames: the attacked tile's frame is the
    # adversarial colour where the gateway flagged it, and differs from the clean tile.
    sheet = np.asarray(Image.open(report / rows[f"hide_pgd_eps{LARGE:g}"]["examples"]))
    clean, attacked = sheet[:TILE, :TILE], sheet[:TILE, TILE:]
    assert not np.array_equal(clean[20:-20, 20:-20], attacked[20:-20, 20:-20])
    assert {p.name for p in report.glob("examples_*.png")} == {r["examples"] for r in rows.values() if "examples" in r}


def test_appear_and_move_count_their_own_eligible_frames(evaluated):
    _, results, _ = evaluated
    rows = _rows(results)
    appear, move = rows[f"appear_pgd_eps{LARGE:g}"], rows[f"move_pgd_eps{LARGE:g}"]
    assert appear["eligible"] == len(TEST) - PERSONS  # frames without a person: one can be made to appear
    assert appear["successful"] == appear["eligible"]
    assert move["eligible"] == len(TEST) - 4  # frames with any box: the four empty frames have none
    assert move["successful"] == move["eligible"]  # every clean box stops being found at 64 levels


def test_report_shares_the_classifier_shape_with_rates_in_the_unit_interval(evaluated):
    _, results, report = evaluated
    (model,) = results["models"].values()
    clean = model["clean_flag_rate"]
    assert clean["n"] == model["n_test"] == len(TEST) and 0 <= clean["flagged"] <= clean["n"]
    assert clean["rate"] == clean["flagged"] / clean["n"] and clean["rate"] <= clean["upper_95"] <= 1.0
    assert model["n_calibration"] == 40 and model["output_kind"] == "detection"
    assert model["clean_accuracy"] is None and model["matches_gateway_thresholds"]
    assert set(model["detectors"]) == {"box_consistency", "patch"}
    table = (report / "results.md").read_text()
    for row in results["rows"]:
        served = row["served"]
        assert served["successful"] == row["successful"] and 0 <= served["detected"] <= served["successful"]
        if row["successful"]:
            assert served["rate"] == served["detected"] / served["successful"]
        else:
            assert served["rate"] is None  # nothing to measure: a dash, never a zero
        for values in row["scorers"].values():
            assert all(v is None or 0.0 <= v <= 1.0 for v in values.values())
        assert row["asr"] is None or 0.0 <= row["asr"] <= 1.0
        assert f"| {row['attack']} | {row['eps']:g} | detector |" in table
        if row["successful"]:
            assert (report / f"roc_{row['key']}.png").is_file()
    assert f"({clean['flagged']}/{clean['n']}, ≤ " in table
    # The served verdicts are the gateway's ensemble at its 5% thresholds, which the refitted scorer
    # reproduces (matches_gateway_thresholds): the two measurements must agree row by row.
    assert clean["rate"] == model["clean_fpr"]["ensemble"]["0.05"]
    for row in results["rows"]:
        assert row["served"]["rate"] == row["scorers"]["ensemble"]["det@0.05"]
    assert results["meta"]["samples"] == len(TEST) and any("PNG" in note for note in results["meta"]["notes"])


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


def test_rules_match_boxes_by_class_and_iou():
    from guard.detection.boxes import BoxSettings
    from guard.tools.evaluation.rules import REGISTRY

    def raw(*boxes: tuple[float, float, float, int]) -> np.ndarray:
        """One frame's [16, 7] yolo output with boxes (cx, cy, score, class) of side 8."""
        out = np.zeros((16, 7), np.float32)
        for i, (cx, cy, score, cls) in enumerate(boxes):
            out[i, :5] = (cx, cy, 8, 8, score)
            out[i, 5 + cls] = 1.0
        return out

    settings = BoxSettings(score_threshold=0.25)
    person, car = (12, 12, 0.9, 0), (12, 12, 0.9, 1)
    shifted = (12 + 5, 12, 0.9, 0)  # IoU 3/13 with the person: not the same box at 0.5
    clean = np.stack([raw(person), raw(person), raw(person), raw(car), raw()])
    after = np.stack([raw(), raw(car), raw(shifted), raw(car, person), raw()])
    hide, appear, move = (REGISTRY[n](settings) for n in ("hide", "appear", "move"))
    assert [list(m) for m in hide.judge(clean, after)] == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert [list(m) for m in appear.judge(clean, after)] == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]]
    assert [list(m) for m in move.judge(clean, after)] == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    loose = REGISTRY["hide"](settings, iou=0.2)  # at IoU 0.2 the shifted person is found again
    assert list(loose.judge(clean[2:3], after[2:3])[1]) == [False]
    two = np.stack([raw(person, (28, 28, 0.9, 0))])  # hiding one of two persons hides nothing
    assert list(hide.judge(two, np.stack([raw(person)]))[1]) == [False]
    assert list(move.judge(two, np.stack([raw(person)]))[1]) == [True]  # but one box is gone: moved


def test_pgd_on_the_8_bit_grid_stays_in_the_ball_and_keeps_its_best_iterate():
    from guard.tools.evaluation.pgd import linf_pgd

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=gen).float() / 255
    target = torch.rand(4, 3, 8, 8, generator=gen)
    eps = 3.5 / 255  # 3 levels reachable, never 4

    def loss(adv: torch.Tensor) -> torch.Tensor:
        return (adv - target).abs().flatten(1).sum(1)

    adv = linf_pgd(loss, x, eps, steps=6, alpha=1 / 255, gen=gen, random_start=True, keep_best=True, levels=255)
    levels = (adv - x) * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 3 + 1e-4
    assert (loss(adv) < loss(x)).all() and adv.min() >= 0 and adv.max() <= 1


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


def test_a_model_with_per_camera_baselines_needs_frames_that_say_their_camera(tmp_path):
    from guard.protocol.errors import ConfigError
    from guard.tools.evaluation.plan import load_plan

    plan = _per_camera_plan(tmp_path)
    with pytest.raises(ConfigError, match=r"key 'models\[0\].model': expected a model without \[cameras.baseline\]"):
        load_plan(plan)
    plan.write_text(plan.read_text().replace("[data]\n", "[data]\ncameras = true\n"))
    test = load_plan(plan).frames("test")
    assert test.per_camera and test.cameras == ("cam_a",) * 8 + ("cam_b",) * 8


def test_per_camera_evaluation_judges_each_camera_after_its_warm_up_and_sends_its_id(tmp_path):
    import urllib.request

    from guard.serving.background import BackgroundServer
    from guard.serving.settings import ServerSettings
    from guard.tools.cli import main
    from guard.tools.evaluation.client import GatewayClient
    from guard.tools.evaluation.frame_data import judged_rows

    assert judged_rows(("a", "a", "b", "a", "b", "b", "b"), 2).tolist() == [3, 5, 6]
    plan = _per_camera_plan(tmp_path)
    plan.write_text(plan.read_text().replace("[data]\n", "[data]\ncameras = true\n"))
    report, work = tmp_path / "report", tmp_path / "work"
    assert main(["evaluate", "--plan", str(plan), "--report-dir", str(report), "--workdir", str(work)]) == 0
    results = json.loads((report / "results.json").read_text())
    summary = results["models"]["detector"]
    assert summary["warmup_frames_per_camera"] == 3 and summary["n_test"] == 16 - 2 * 3
    assert not set(results["sample_indices"]) & {0, 1, 2, 8, 9, 10}  # no warm-up frame is attacked
    # The calibrated copy, served again: the frames reach it as their cameras' (per-camera metrics).
    settings = ServerSettings(repository=work / "repository", grpc_port=0, metrics_port=0)
    with BackgroundServer(settings) as srv, GatewayClient(srv.grpc_url) as client:
        frames = [(tmp_path / "cam_a" / f).read_bytes() for f in sorted(p.name for p in (tmp_path / "cam_a").iterdir())]
        client.infer_encoded("detector", frames[:5], cameras=["lobby"] * 2 + ["gate"] * 3)
        metrics = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
    assert 'guard_camera_requests_total{camera="lobby",model="detector"} 2.0' in metrics
    assert 'guard_camera_requests_total{camera="gate",model="detector"} 3.0' in metrics
