"""guard evaluate: the metrics' maths on small arrays, and a short run through a live gateway."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guard.detection.ensemble import Union
from guard.detection.thresholds import fit_thresholds
from guard.tools.evaluation import rates as m


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


def test_detection_at_fpr_uses_calibration_thresholds():
    calibration = {"a": np.arange(100.0), "b": np.zeros(100)}
    scorer = m.Scorer("a", ["a"], calibration, fprs=(0.01, 0.05))
    # split-conformal: (c + 1) / 101 <= 0.05 allows 4 exceedances, so the threshold sits above 95
    assert scorer.thresholds[0.05]["a"] == fit_thresholds({"a": calibration["a"]}, 0.05).thresholds["a"]
    assert 95.0 < scorer.thresholds[0.05]["a"] <= 96.0
    positives = {"a": np.array([99.5, 96.5, 50.0, 10.0]), "b": np.zeros(4)}
    result = scorer.evaluate({"a": np.arange(100.0), "b": np.zeros(100)}, positives)
    assert result["det@0.05"] == 0.5
    assert result["det@0.01"] == 0.25
    assert scorer.clean_fpr({"a": np.array([0.0, 97.0, 99.5, 1.0])}) == {"0.01": 0.25, "0.05": 0.5}


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
    clean = np.array([0, 1, 2, 0])       # the last one is wrong before any attack: not eligible
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

    detectors = [BitDepthDetector("b1", 1.0, bits=1), MedianDetector("m2", 1.0, size=2),
                 MedianDetector("m3", 1.0, size=3)]
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

    attacks = ("fgsm", "deepfool")
    report = tmp_path / "report"
    results = run_evaluation(EvalOptions(samples=24, quick=True, report_dir=report, workdir=tmp_path / "work",
                                         attacks=attacks, epsilons=(0.3,), adaptive_steps=3))
    assert (report / "results.json").is_file() and (report / "results.md").is_file()
    assert json.loads((report / "results.json").read_text())["rows"] == json.loads(json.dumps(results["rows"]))
    keys = {row["key"] for row in results["rows"]}
    assert {"fgsm_eps0.3", "deepfool", "adaptive_pgd_eps0.3"} <= keys
    assert {k for k in keys if k.startswith("trigger_")} == {"trigger_blend", "trigger_checkerboard", "trigger_patch"}
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

    args = build_parser().parse_args(["evaluate", "--quick", "--samples", "24", "--report-dir", "r", "--seed", "3"])
    assert (args.command, args.quick, args.samples, str(args.report_dir), args.seed, args.connect) == \
        ("evaluate", True, 24, "r", 3, None)
    assert args.func.__name__ == "_evaluate"
