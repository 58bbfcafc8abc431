"""Threshold fitting with false-positive control over the ensemble."""

import numpy as np
import pytest

from guard.detection.bounds import allowed_exceedances
from guard.detection.thresholds import fit_thresholds, flag_rates, threshold_for


def test_threshold_allows_exactly_the_budget():
    scores = np.arange(100, dtype=float)
    t = threshold_for(scores, 5)
    assert (scores >= t).sum() == 5
    assert (scores >= threshold_for(scores, 0)).sum() == 0


def test_threshold_with_ties_never_exceeds_budget():
    scores = np.array([0.0] * 90 + [1.0] * 10)
    assert (scores >= threshold_for(scores, 5)).sum() <= 5


@pytest.mark.parametrize("correlation", [0.0, 0.5, 1.0])
def test_union_meets_target_whatever_the_overlap(correlation):
    rng = np.random.default_rng(1)
    shared = rng.normal(size=2000)
    scores = {f"d{i}": correlation * shared + (1 - correlation) * rng.normal(size=2000) for i in range(3)}
    fit = fit_thresholds(scores, 0.05)
    _, union = flag_rates(scores, fit.thresholds)
    assert union == fit.calibration_fpr == allowed_exceedances(2000, 0.05) / 2000
    # The budget is used, not wasted: close to the target (n = 2000 allows 4.4%), never over it.
    assert union > 0.04
    if correlation == 1.0:  # identical detectors each get the whole budget
        assert all(r == union for r in fit.detector_fpr.values())


def test_held_out_rate_near_target():
    rng = np.random.default_rng(2)
    calibration = {"a": rng.exponential(size=5000), "b": rng.exponential(size=5000)}
    held_out = {"a": rng.exponential(size=5000), "b": rng.exponential(size=5000)}
    fit = fit_thresholds(calibration, 0.05)
    _, union = flag_rates(held_out, fit.thresholds)
    assert abs(union - 0.05) < 0.015


def test_rejects_mismatched_sample_counts():
    with pytest.raises(ValueError, match="same, non-zero number"):
        fit_thresholds({"a": np.zeros(3), "b": np.zeros(4)}, 0.05)


def test_small_calibration_sets_flag_only_what_the_bound_allows():
    # With 40 samples one flag is a 5% quantile, but P(rate <= 5%) would then be only ~0.6: none is allowed.
    assert fit_thresholds({"a": np.arange(40, dtype=float)}, 0.05).calibration_fpr == 0.0
    for n in (100, 359):
        fit = fit_thresholds({"a": np.arange(n, dtype=float)}, 0.05)
        assert round(fit.calibration_fpr * n) == allowed_exceedances(n, 0.05)


def test_leftover_budget_is_used_without_breaking_the_bound():
    rng = np.random.default_rng(3)
    scores = {f"d{i}": rng.normal(size=359) for i in range(4)}
    fit = fit_thresholds(scores, 0.05)
    assert round(fit.calibration_fpr * 359) == allowed_exceedances(359, 0.05)  # every allowed flag is used


def test_monitors_get_their_own_threshold_outside_the_ensemble_budget(tmp_path):
    from guard.tools.calibrate import calibrate_model
    from tests.conftest import DEMO_REPOSITORY
    from tests.conftest import demo_split as load_split

    x, y = load_split("calibration")
    tables = [
        {"name": "bd2", "type": "squeeze_bit_depth", "bits": 2},
        {"name": "margin", "type": "confidence_margin"},
        {"name": "bd1", "type": "squeeze_bit_depth", "bits": 1, "monitor": True},
    ]
    report = calibrate_model(
        DEMO_REPOSITORY / "digits_fp32" / "model.onnx", "m", tmp_path, np.array(x), y, detectors=tables, target_fpr=0.05
    )
    assert report["monitors"] == ["bd1"]
    per = report["calibration_fpr_per_detector"]
    # The monitor alone uses (almost) the whole target; the two judges share it.
    assert 0.025 <= per["bd1"] <= 0.05
    assert report["calibration_fpr"] <= 0.05 and per["bd2"] < 0.05 and per["margin"] < 0.05
    assert "monitor = true" in (tmp_path / "m" / "config.toml").read_text()


def test_scores_below_the_threshold_floor_terminate():
    # Near-constant clean scores (e.g. an untrained network's vanishing logits) must still calibrate.
    fit = fit_thresholds({"a": np.zeros(40), "b": np.linspace(0, 1, 40)}, 0.05)
    assert fit.calibration_fpr <= 0.05


def test_a_budget_of_every_score_flags_every_score_above_the_floor():
    from guard.detection.thresholds import MIN_THRESHOLD

    assert threshold_for(np.array([1.0, 2.0, 3.0]), 3) == MIN_THRESHOLD
    assert threshold_for(np.array([1.0, 2.0, 3.0]), 2) == np.nextafter(1.0, np.inf)


def test_a_score_equal_to_its_threshold_flags():
    from guard.detection.thresholds import flags

    assert flags({"a": np.array([1.0, 2.0, 3.0])}, {"a": 2.0})["a"].tolist() == [False, True, True]


def test_fit_thresholds_says_what_is_wrong_with_its_scores():
    with pytest.raises(ValueError, match="^no detector scores to calibrate$"):
        fit_thresholds({}, 0.05)
    wrong = r"^every detector needs the same, non-zero number of clean scores, got \{0\}$"
    with pytest.raises(ValueError, match=wrong):
        fit_thresholds({"a": np.zeros(0)}, 0.05)
    assert fit_thresholds({"a": np.array([0.5])}, 0.05).calibration_fpr == 0.0  # one score is enough to run


def test_no_detector_can_take_one_more_exceedance_after_the_hand_out():
    """The leftover budget is handed out until every detector's next exceedance would break the
    bound, also when a detector whose scores sit under the floor (it can never flag) comes first."""
    from guard.detection.bounds import within_target

    b = np.arange(200.0)
    c = b.copy()
    c[196] = 193.5  # c's top rows: 199, 198, 197, 195, 194; b's: 199, 198, 197, 196, 195
    scores = {"a": np.zeros(200), "b": b, "c": c}
    fit = fit_thresholds(scores, 0.05)
    # Four each flag five rows; b's fifth (row 195) is already flagged by c, so b may take it.
    assert int((b >= fit.thresholds["b"]).sum()) == 5
    for name in ("b", "c"):
        taken = int((scores[name] >= fit.thresholds[name]).sum())
        trial = {**fit.thresholds, name: threshold_for(scores[name], taken + 1)}
        flagged = int(np.logical_or.reduce([scores[n] >= trial[n] for n in scores]).sum())
        assert not within_target(flagged, 200, 0.05), name
