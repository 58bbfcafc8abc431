"""Combining detectors: Fisher's p-value combination against the union, on small known inputs."""

import numpy as np
import pytest

from guard.detection.detectors.squeezing import BitDepthDetector
from guard.detection.detectors.strip import StripDetector
from guard.detection.ensemble import Fisher, Union
from guard.detection.verdicts import verdicts
from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config


def test_fisher_p_values_and_statistic_by_hand():
    fisher = Fisher({"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([0.0, 0.0, 0.0, 1.0])}, threshold=4.0)
    scores = {"a": np.array([0.5, 3.0, 9.0]), "b": np.array([0.0, 2.0, 2.0])}
    p = fisher.p_values(scores)
    # (1 + #{ref >= s}) / (n + 1) up to the tail's start u (here the 2nd largest reference); above
    # it, (m + 1) / (n + 1) * exp(-(s - u) / scale) with m = 1 and scale = mean excess = 1.
    np.testing.assert_allclose(p["a"], [5 / 5, 3 / 5, 2 / 5 * np.exp(-6.0)])
    np.testing.assert_allclose(p["b"], [5 / 5, 2 / 5 * np.exp(-2.0), 2 / 5 * np.exp(-2.0)])
    expected = -2 * (np.log(p["a"]) + np.log(p["b"]))
    np.testing.assert_allclose(fisher.statistic(scores), expected)
    np.testing.assert_allclose(fisher.ratio(scores), expected / 4.0)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.1])
def test_fisher_holds_the_target_on_fresh_clean_scores(target):
    rng = np.random.default_rng(0)

    def clean(n):  # three correlated detectors, as squeezers of one model are
        shared = rng.normal(size=n)
        return {f"d{i}": shared + rng.normal(size=n) for i in range(3)}

    fisher = Fisher.fit(clean(400), target)
    rates = [float((fisher.ratio(clean(2000)) >= 1).mean()) for _ in range(5)]
    assert np.mean(rates) <= target * 1.3 + 0.003


def test_fisher_beats_the_union_when_evidence_is_spread():
    # Each positive is moderately unusual to all detectors, never extreme to one: the union,
    # which splits its budget, misses what the combined evidence finds.
    rng = np.random.default_rng(1)
    calibration = {f"d{i}": rng.normal(size=1000) for i in range(4)}
    positives = {f"d{i}": rng.normal(1.5, 1.0, size=500) for i in range(4)}
    fisher, union = Fisher.fit(calibration, 0.05), Union.fit(calibration, 0.05)
    assert (fisher.ratio(positives) >= 1).mean() > (union.ratio(positives) >= 1).mean() + 0.1


def test_omnibus_keeps_a_single_plain_signal_that_fisher_dilutes():
    # One detector fires plainly, five see nothing: Fisher's sum drowns it, the smallest p-value
    # does not; spread evidence is still Fisher's. Omnibus catches both at the target.
    rng = np.random.default_rng(3)
    calibration = {f"d{i}": rng.normal(size=1000) for i in range(6)}
    single = {f"d{i}": rng.normal(size=500) for i in range(6)}
    single["d0"] = rng.normal(3.5, 0.5, size=500)
    spread = {f"d{i}": rng.normal(1.2, 1.0, size=500) for i in range(6)}
    fisher, omnibus = Fisher.fit(calibration, 0.05), Fisher.fit(calibration, 0.05, omnibus=True)

    def rate(combiner, s):
        return float((combiner.ratio(s) >= 1).mean())

    assert rate(omnibus, single) > rate(fisher, single) + 0.2
    assert rate(omnibus, spread) > rate(Union.fit(calibration, 0.05), spread)
    clean = {f"d{i}": rng.normal(size=4000) for i in range(6)}
    assert rate(omnibus, clean) <= 0.06


def test_verdicts_under_fisher_name_who_fired_and_keep_the_trigger_verdict():
    detectors = [BitDepthDetector("b", 2.0, bits=2), StripDetector("s", 2.0, n=1, references="r.npy", seed=0)]
    fisher = Fisher({"b": np.arange(10.0), "s": np.arange(10.0)}, threshold=4.0)
    scores = {"b": np.array([0.0, 9.5, 9.5, 1.5]), "s": np.array([0.0, 9.5, 1.0, 1.5])}
    clean, both, one, spread = verdicts(detectors, scores, [slice(i, i + 1) for i in range(4)], fisher)
    assert clean.verdict == "clean" and clean.score == 0.0
    assert both.verdict == "trigger" and both.flagged_by == ("b", "s")
    assert one.flagged_by == ("b",) and one.verdict == "adversarial" and one.score >= 1
    # Nobody over their own threshold but p-values 9/11 each: T below the threshold, not flagged.
    assert spread.verdict == "clean" and spread.score < 1


def test_a_row_only_the_ensemble_flags_names_its_most_unusual_detector():
    """Moderate evidence in two detectors adds up under Fisher while neither passes its own
    threshold: the row is flagged, and `flagged_by` names the detector with the smaller p-value."""
    detectors = [BitDepthDetector("b", 20.0, bits=2), BitDepthDetector("s", 20.0, bits=2)]
    references = {"b": np.arange(10.0), "s": np.arange(10.0)}
    scores = {"b": np.array([8.5, 7.5, 0.0]), "s": np.array([7.5, 8.5, 0.0])}
    fisher = Fisher(references, threshold=6.0)
    b_unusual, s_unusual, clean = verdicts(detectors, scores, [slice(i, i + 1) for i in range(3)], fisher)
    assert b_unusual.flagged_by == ("b",) and b_unusual.verdict == "adversarial" and b_unusual.score > 1
    assert s_unusual.flagged_by == ("s",) and s_unusual.verdict == "adversarial"
    assert clean.flagged_by == () and clean.verdict == "clean" and clean.score < 1


def test_a_row_whose_ensemble_statistic_equals_its_threshold_is_flagged():
    detectors = [BitDepthDetector("b", 20.0, bits=2), BitDepthDetector("s", 20.0, bits=2)]
    references = {"b": np.arange(10.0), "s": np.arange(10.0)}
    scores = {"b": np.array([8.5]), "s": np.array([7.5])}
    at_threshold = float(Fisher(references, threshold=1.0).statistic(scores)[0])
    (judged,) = verdicts(detectors, scores, [slice(0, 1)], Fisher(references, threshold=at_threshold))
    assert judged.score == 1.0 and judged.verdict == "adversarial"


def test_fisher_config_needs_its_references_and_threshold(tmp_path):
    from tests.conftest import DEMO_REPOSITORY

    model = tmp_path / "m"
    model.mkdir()
    text = (DEMO_REPOSITORY / "digits_fp32" / "config.toml").read_text().split("\n[ensemble]")[0]
    (model / "model.onnx").write_bytes((DEMO_REPOSITORY / "digits_fp32" / "model.onnx").read_bytes())
    (model / "config.toml").write_text(
        text.replace('name = "digits_fp32"', 'name = "m"') + '\n[ensemble]\nmethod = "fisher"\nthreshold = 12.5\n'
    )
    with pytest.raises(ConfigError, match="ensemble.references"):
        load_model_config(model)
    np.savez(model / "ensemble.npz", a=np.zeros(3))
    assert load_model_config(model).detection.ensemble.threshold == 12.5


def test_adaptive_attack_p_values_match_the_gateway_and_have_gradients():
    import torch

    rng = np.random.default_rng(2)
    fisher = Fisher.fit({"a": rng.gamma(2.0, size=200)}, 0.05)
    reference = fisher.references["a"]
    # At the clean scores themselves and in the tail, the smooth p is the gateway's p.
    points = np.concatenate([reference, reference[-1] + np.array([0.5, 2.0, 8.0])])
    score = torch.tensor(points, requires_grad=True)
    smooth = fisher.neg_log_p("a", score)
    np.testing.assert_allclose(smooth.detach().numpy(), -np.log(fisher.p_values({"a": points})["a"]), rtol=1e-9)
    smooth.sum().backward()
    assert (score.grad[-3:] > 0).all()  # the attacker can descend it


def test_p_values_count_the_clean_scores_at_least_as_large_and_leave_one_out_drops_the_row_itself():
    reference = np.arange(10.0)
    # Below the tail (it starts above the 9th score): plain counts.
    assert Fisher.empirical_p(reference, np.array([4.0]))[0] == (1 + 6) / 11
    assert Fisher.empirical_p(reference, np.array([4.0]), loo=True)[0] == (1 + 6 - 1) / 10


def test_the_tail_is_fitted_to_the_top_tenth_of_the_clean_scores():
    u, scale, m = Fisher.tail(np.arange(100.0))
    assert (u, scale, m) == (89.0, 5.5, 10)  # the 10 scores above the 11th largest, mean excess 5.5
    u, scale, m = Fisher.tail(np.array([0.0, 1.0]))  # the smallest reference: one score in the tail
    assert (u, scale, m) == (0.0, 1.0, 1)


def test_fisher_needs_two_calibration_scores_and_works_with_two():
    with pytest.raises(ValueError, match="^Fisher combination needs at least 2 calibration scores per detector$"):
        Fisher.fit({"a": np.array([1.0])}, 0.05)
    fisher = Fisher.fit({"a": np.array([1.0, 2.0]), "b": np.array([0.5, 3.0])}, 0.05)
    assert np.isfinite(fisher.ratio({"a": np.array([1.5, 9.0]), "b": np.array([1.0, 9.0])})).all()


def test_fisher_thresholds_come_from_leave_one_out_p_values():
    """The calibration rows are judged against the other n - 1 rows, as a new input would be:
    judged against all n (themselves included) they look more typical and the threshold drops."""
    from guard.detection.bounds import allowed_exceedances
    from guard.detection.thresholds import threshold_for

    scores = np.random.default_rng(0).gamma(2.0, size=60)
    reference = np.sort(scores)
    loo = Fisher.fisher_statistic({"a": Fisher.empirical_p(reference, scores, loo=True)})
    in_sample = Fisher.fisher_statistic({"a": Fisher.empirical_p(reference, scores)})
    k = allowed_exceedances(60, 0.05)
    assert Fisher.fit({"a": scores}, 0.05).threshold == threshold_for(loo, k) != threshold_for(in_sample, k)


def test_the_smooth_p_value_is_linear_between_the_two_largest_clean_scores():
    """Where the step function's body is below the fitted tail (a far outlier among the clean
    scores stretches the tail), the attack surface interpolates between neighbouring scores."""
    import torch

    reference = np.concatenate([np.arange(90) / 10, 9.0 + np.arange(1, 10) / 100, [30.0]])  # n = 100
    fisher = Fisher({"a": reference}, threshold=1.0)
    between = reference[-2] + 0.05 * (reference[-1] - reference[-2])
    got = float(fisher.neg_log_p("a", torch.tensor([between], dtype=torch.float64))[0])
    # survival 3/101 at the second largest score, 2/101 at the largest, 5% of the way between
    assert got == pytest.approx(-np.log((3 - 0.05) / 101), rel=1e-9)
