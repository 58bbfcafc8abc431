"""guard evaluate: the metrics' maths on small arrays, and a short run through a live gateway."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from guard.detection.ensemble import Union
from guard.detection.thresholds import fit_thresholds
from guard.tools.evaluation import rates as m

ROOT = Path(__file__).resolve().parents[2]


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        neg = rng.integers(0, 6, size=rng.integers(1, 40)).astype(float)  # many ties
        pos = rng.integers(2, 9, size=rng.integers(1, 40)).astype(float)
        expected = roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos])
        assert m.auroc(neg, pos) == pytest.approx(expected, abs=1e-12)
    assert m.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert m.auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert m.auroc([1.0], []) is None


def test_roc_curve_ends_and_area():
    neg, pos = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.9, 0.4, 0.7])
    fpr, tpr = m.roc_curve(neg, pos)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(m.auroc(neg, pos))


def test_the_operating_point_flags_at_most_the_rate_of_clean_scores_by_the_guards_rule():
    clean = np.random.default_rng(0).gamma(2.0, size=310)
    for fpr in (0.01, 0.05):
        threshold = m.operating_threshold(clean, fpr)
        assert m.flagged(clean, threshold).sum() == math.floor(fpr * 310)  # no ties: exactly the budget
        assert m.flagged(threshold, threshold) and not m.flagged(np.nextafter(threshold, 0.0), threshold)  # >=
    assert not m.flagged(np.ones(10), m.operating_threshold(np.ones(10), 0.05)).any()  # ties never over-flag
    tied = np.r_[np.zeros(290), np.full(10, 3.0)]
    assert m.flagged(tied, m.operating_threshold(tied, 0.05)).sum() == 10  # the tied top 3% fits a 5% budget


def test_detection_at_fpr_uses_calibration_thresholds():
    """The scorers' thresholds are the gateway's own fit (guard.detection.thresholds) on the
    calibration scores, per target FPR; detection and the clean flag rate are read against them.
    (Which exact quantile the fit picks is that module's rule and its tests' business.)"""
    calibration = {"a": np.arange(1000.0), "b": np.zeros(1000)}
    scorer = m.Scorer("a", ["a"], calibration, fprs=(0.01, 0.05))
    t1, t5 = scorer.thresholds[0.01]["a"], scorer.thresholds[0.05]["a"]
    assert t5 == fit_thresholds({"a": calibration["a"]}, 0.05).thresholds["a"]
    assert t1 == fit_thresholds({"a": calibration["a"]}, 0.01).thresholds["a"]
    assert 900.0 < t5 < t1 - 1.0  # a stricter target needs a higher threshold
    assert np.mean(calibration["a"] >= t5) <= 0.05
    positives = {"a": np.array([t1 + 0.5, t5 + 0.25, t5 - 1.0, 10.0]), "b": np.zeros(4)}
    result = scorer.evaluate(calibration, positives)
    assert result["det@0.05"] == 0.5
    assert result["det@0.01"] == 0.25
    assert scorer.clean_fpr({"a": np.array([0.0, t5 + 0.25, t1 + 0.5, 1.0])}) == {"0.01": 0.25, "0.05": 0.5}


def test_union_ensemble_and_ratio_score():
    scores = {"a": np.array([0.5, 2.0, 0.1]), "b": np.array([3.0, 0.0, 0.1])}
    thresholds = {"a": 1.0, "b": 4.0}
    assert (Union(thresholds).ratio(scores) >= 1.0).tolist() == [False, True, False]
    assert Union(thresholds).ratio(scores).tolist() == pytest.approx([0.75, 2.0, 0.1])
    rng = np.random.default_rng(1)
    calibration = {"a": rng.random(200), "b": rng.random(200)}
    scorers = m.build_scorers(["a", "b"], calibration, {"pair": ["a", "b"], "absent": ["a", "zzz"]})
    assert set(scorers) == {"ensemble", "pair", "a", "b"}
    # the union is calibrated as a whole: its clean flag rate stays within the target
    assert scorers["ensemble"].flags(calibration, 0.05).mean() <= 0.05


def test_attack_success_rate():
    y = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 2, 0])  # the last one is wrong before any attack: not eligible
    adv = np.array([5, 1, 7, 3])
    eligible, successful = m.success(clean, adv, y)
    assert eligible.tolist() == [True, True, True, False]
    assert m.attack_success_rate(eligible, successful) == pytest.approx(2 / 3)
    eligible, successful = m.success(None, np.array([0, 0, 1, 0]), y, target=0)
    assert eligible.tolist() == [False, True, True, True]
    assert m.attack_success_rate(eligible, successful) == pytest.approx(2 / 3)
    assert m.attack_success_rate(np.zeros(3, bool), np.zeros(3, bool)) is None


def test_adaptive_attack_differentiates_through_the_gateways_own_squeezers():
    """The attack uses each detector's differentiable_variants: the same values the gateway computes
    (even after the gateway filled the median's index cache in inference mode), with gradients."""
    import torch

    from guard.detection.detectors.squeezing import BitDepthDetector, MedianDetector

    detectors = [
        BitDepthDetector("b1", 1.0, bits=1),
        MedianDetector("m2", 1.0, size=2),
        MedianDetector("m3", 1.0, size=3),
    ]
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # as a gateway in the same process does
        served = [d.variants(x) for d in detectors]
    leaf = x.clone().requires_grad_(True)
    attacked = [d.differentiable_variants(leaf) for d in detectors]
    for got, want in zip(attacked, served):
        assert torch.equal(got.detach(), want)
    (grad,) = torch.autograd.grad(sum(v.sum() for v in attacked), leaf)
    assert grad.abs().sum() > 0


def _in_unit(value) -> bool:
    return value is None or 0.0 <= value <= 1.0


def test_quick_evaluation_through_live_gateway(tmp_path):
    pytest.importorskip("torchattacks")
    pytest.importorskip("matplotlib")
    from guard.tools.evaluation.run import EvalOptions, run_evaluation

    plan = _write_plan(tmp_path / "plan")  # one attacked model, one with a trigger
    attacks = ("fgsm", "deepfool")
    report = tmp_path / "report"
    results = run_evaluation(
        EvalOptions(
            plan=plan,
            samples=24,
            quick=True,
            report_dir=report,
            workdir=tmp_path / "work",
            attacks=attacks,
            epsilons=(0.3,),
            adaptive_steps=3,
        )
    )
    assert results["meta"]["plan"] == str(plan.resolve())
    assert (report / "results.json").is_file() and (report / "results.md").is_file()
    assert json.loads((report / "results.json").read_text())["rows"] == json.loads(json.dumps(results["rows"]))
    keys = {row["key"] for row in results["rows"]}
    assert {"fgsm_eps0.3", "deepfool", "adaptive_pgd_eps0.3"} <= keys
    assert {k for k in keys if k.startswith("trigger_")} == {"trigger_bd"}
    table = (report / "results.md").read_text()
    for row in results["rows"]:
        assert f"| {row['attack']} |" in table
        assert _in_unit(row["asr"]) and row["n"] > 0
        assert {"ensemble", "fs_paper", "strip", "mahalanobis"} <= set(row["scorers"])
        for values in row["scorers"].values():
            assert all(_in_unit(v) for v in values.values()), (row["key"], values)
        if row["successful"]:
            assert (report / f"roc_{row['key']}.png").is_file()
    for model in results["models"].values():
        assert model["matches_gateway_thresholds"]  # the 5% union is the gateway's own configuration
        assert all(_in_unit(v) for fprs in model["clean_fpr"].values() for v in fprs.values())


def test_cli_parses_evaluate():
    from guard.tools.cli import build_parser

    args = build_parser().parse_args(
        ["evaluate", "--plan", "p.toml", "--quick", "--samples", "24", "--report-dir", "r", "--seed", "3"]
    )
    assert (args.command, str(args.plan), args.quick, args.samples, str(args.report_dir), args.seed, args.connect) == (
        "evaluate",
        "p.toml",
        True,
        24,
        "r",
        3,
        None,
    )
    from guard.tools.commands import evaluate

    assert args.func is evaluate.run
    with pytest.raises(SystemExit):  # the plan is the only source of data, surrogate and models
        build_parser().parse_args(["evaluate", "--quick"])


def test_trigger_file_is_checked(tmp_path):
    from guard.protocol.errors import ConfigError
    from guard.tools.evaluation.triggers import load_trigger

    bad = tmp_path / "bad.npz"
    np.savez(bad, mask=np.full((16, 16), 1.5, np.float32), pattern=np.zeros((16, 16), np.float32))
    with pytest.raises(ConfigError, match=r"bad\.npz: key 'mask'"):
        load_trigger(bad)
    np.savez(bad, mask=np.ones((4, 4), np.float32))
    with pytest.raises(ConfigError, match="key 'pattern'"):
        load_trigger(bad)
    np.savez(bad, mask=np.ones((4, 4), np.float32), pattern=np.zeros((4, 4), np.float32))
    with pytest.raises(ConfigError, match="broadcasts to the samples' shape"):
        load_trigger(bad).apply(np.zeros((2, 1, 16, 16), np.float32))


def _write_plan(tmp_path, models_toml: str | None = None, test_x=None) -> Path:
    """A small valid plan in tmp_path (real digits rows, the shipped FP32 model), optionally with
    its [[models]] or its test split replaced."""
    import shutil

    from tests.conftest import DEMO_DATA

    tmp_path.mkdir(parents=True, exist_ok=True)
    for key, split in (("fit", "train"), ("calibration", "calibration"), ("test", "test")):
        shutil.copyfile(DEMO_DATA / f"{split}.npz", tmp_path / f"{key}.npz")
    if test_x is not None:
        np.savez(tmp_path / "test.npz", x=test_x, y=np.zeros(len(test_x), np.int64))
    shutil.copyfile(
        ROOT / "examples" / "guard_examples" / "repository" / "digits_fp32" / "model.onnx", tmp_path / "m.onnx"
    )
    np.savez(tmp_path / "t.npz", mask=np.ones((16, 16), np.float32), pattern=np.zeros((16, 16), np.float32))
    models_toml = models_toml or (
        '[[models]]\nname = "clean"\nonnx = "m.onnx"\n\n'
        '[[models]]\nname = "bd"\nonnx = "m.onnx"\ntrigger = "t.npz"\ntarget = 3\n'
    )
    path = tmp_path / "plan.toml"
    path.write_text(
        '[data]\nfit = "fit.npz"\ncalibration = "calibration.npz"\ntest = "test.npz"\n\n'
        '[surrogate]\nonnx = "m.onnx"\n\n' + models_toml
    )
    return path


def test_plan_names_everything_relative_to_itself(tmp_path, monkeypatch):
    from guard.tools.evaluation.plan import load_plan

    path = _write_plan(tmp_path)
    monkeypatch.chdir(ROOT / "docs")  # paths resolve against the plan file, not the working directory
    plan = load_plan(path)
    assert [s.name for s in plan.attacked] == ["clean"] and [s.name for s in plan.backdoored] == ["bd"]
    assert plan.surrogate == tmp_path.resolve() / "m.onnx" and plan.backdoored[0].target == 3
    assert plan.test.x.dtype == np.float32 and plan.test.y.dtype == np.int64 and len(plan.test.y) == 360
    assert plan.backdoored[0].trigger.apply(plan.test.x[:2]).max() == 0.0


@pytest.mark.parametrize(
    "models_toml, key",
    [
        ('[[models]]\nname = "a"\nonnx = "m.onnx"\ntrigger = "t.npz"\n', "models[0].target"),
        ('[[models]]\nname = "a"\nonnx = "missing.onnx"\n', "models[0].onnx"),
        ('[[models]]\nname = "a"\nonnx = "m.onnx"\nbogus = 1\n', "models[0].bogus"),
        ('[[models]]\nname = "a/b"\nonnx = "m.onnx"\n', "models[0].name"),
        ('[[models]]\nname = "a"\nonnx = "m.onnx"\nartifacts = ["nope.bin"]\n', "models[0].artifacts[0]"),
        ('[[models]]\nname = "a"\nonnx = "m.onnx"\nartifacts = ["t.npz", "t.npz"]\n', "models[0].artifacts"),
        ('[[models]]\nname = "a"\nonnx = "m.onnx"\n[[models]]\nname = "a"\nonnx = "m.onnx"\n', "models"),
        ("", "models"),
        ('[[models]]\nname = "a"\nonnx = "m.onnx"\n[[attacks]]\nname = "nope"\n', "attacks[0].name"),
        ('[[models]]\nname = "a"\nonnx = "m.onnx"\n[[attacks]]\nname = "fgsm"\neps = 0.1\n', "attacks[0].name"),
        ('[[models]]\nname = "a"\nonnx = "m.onnx"\n[[attacks]]\nname = "pgd"\neps = -1\n', "attacks[0].eps"),
        ('[[models]]\nname = "a"\nonnx = "m.onnx"\n[[attacks]]\nname = "pgd"\nsteps = 5\n', "attacks[0].steps"),
    ],
)
def test_plan_errors_name_the_file_and_the_key(tmp_path, models_toml, key):
    from guard.protocol.errors import ConfigError
    from guard.tools.evaluation.plan import load_plan

    path = _write_plan(tmp_path, models_toml or "\n")
    with pytest.raises(ConfigError) as raised:
        load_plan(path)
    assert raised.value.message.startswith(f"{path.resolve()}: key '{key}'"), raised.value.message


def test_a_plan_adds_attacks_to_the_suite_by_name(tmp_path):
    from guard.tools.evaluation.attacks import AttackSpec
    from guard.tools.evaluation.plan import load_plan

    models = '[[models]]\nname = "a"\nonnx = "m.onnx"\n'
    attacks = (
        '[[attacks]]\nname = "pgd"\neps = 0.05\nparams = { steps = 3 }\n\n[[attacks]]\nname = "fgsm"\neps = 0.05\n'
    )
    plan = load_plan(_write_plan(tmp_path, models + attacks))
    assert plan.attacks == (AttackSpec("pgd", 0.05, {"steps": 3}), AttackSpec("fgsm", 0.05))


def test_plan_data_must_be_float32_in_unit_range(tmp_path):
    from guard.protocol.errors import ConfigError
    from guard.tools.evaluation.plan import load_plan

    for bad, pattern in (
        (np.zeros((4, 1, 16, 16), np.float64), "float32"),
        (np.full((4, 1, 16, 16), 2.0, np.float32), r"\[0, 1\]"),
    ):
        path = _write_plan(tmp_path, test_x=bad)
        with pytest.raises(ConfigError, match=rf"test\.npz: key 'x': expected .*{pattern}"):
            load_plan(path)


def test_evaluate_refuses_a_bad_plan_before_any_work(tmp_path, caplog):
    from guard.tools.cli import main

    path = _write_plan(tmp_path, '[[models]]\nname = "a"\nonnx = "m.onnx"\ntrigger = "t.npz"\n')
    assert main(["evaluate", "--plan", str(path), "--report-dir", str(tmp_path / "r")]) == 2
    assert "models[0].target" in caplog.text and not (tmp_path / "r").exists()


def test_pgd_is_seeded_and_stays_in_the_ball():
    import torch

    from guard.tools.evaluation.pgd import linf_pgd, untargeted_pgd

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    runs = [untargeted_pgd(model, x, y, 0.1, 10, 0.025, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert (runs[0] - x).abs().max() <= 0.1 + 1e-6 and runs[0].min() >= 0 and runs[0].max() <= 1
    loss = torch.nn.functional.cross_entropy
    assert loss(model(runs[0]), y) > loss(model(x), y)
    # keep_best returns, per row, the lowest-loss iterate: never worse than the start
    best = linf_pgd(lambda a: loss(model(a), y, reduction="none"), x, 0.1, 5, 0.02, random_start=False, keep_best=True)
    assert (loss(model(best), y, reduction="none") <= loss(model(x), y, reduction="none") + 1e-6).all()


def test_a_plan_of_backdoored_models_needs_no_surrogate(tmp_path):
    from guard.tools.evaluation.plan import load_plan

    path = _write_plan(tmp_path, '[[models]]\nname = "bd"\nonnx = "m.onnx"\ntrigger = "t.npz"\ntarget = 1\n')
    path.write_text(path.read_text().replace('[surrogate]\nonnx = "m.onnx"\n', ""))
    plan = load_plan(path)
    assert plan.surrogate is None and not plan.attacked and plan.names == ["bd"]


def test_the_client_keeps_no_more_in_flight_than_the_gateway_answers_within_a_quarter_deadline():
    from guard.tools.evaluation.client import in_flight

    assert in_flight(64, 60.0, None) == 2  # before any answer: two
    assert in_flight(64, 60.0, 0.001) == 64  # a fast model: the whole window
    assert in_flight(64, 60.0, 2.0) == 7  # 2 s a frame under a 60 s deadline: 15 s of queue
    assert in_flight(64, 5.0, 0.4) == 3  # a model's 5 s default deadline
    assert in_flight(64, 5.0, 1.5) == 1  # slower than the deadline allows: one at a time


def test_guard_evaluate_the_api_and_the_server_import_without_the_video_and_text_extras():
    """torchvision comes with guard[video] (boxes), tokenizers and the word lists with guard[text]; a
    tensor plan or an image model must not need them, so nothing on the import path of `guard
    evaluate`, guard.api or the server may import them at module level."""
    import subprocess
    import sys

    probe = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in EXTRAS:\n"
        "            raise ImportError(f'{name} is an extra')\n"
        "EXTRAS = ('torchvision', 'av', 'tritonclient', 'tokenizers', 'wordfreq', 'rapidfuzz', 'safetensors')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import guard.api, guard.tools.evaluation.run, guard.tools.cli, guard.serving.server\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
