"""The exceedance bound behind every threshold: on fresh calibration sets, the rate at which the
chosen threshold flags NEW clean inputs exceeds the target no more often than 1 - confidence."""

import numpy as np
import pytest
from scipy.stats import beta

from guard.detection.bounds import allowed_exceedances, upper_bound, within_target


def test_allowed_exceedances_is_the_largest_count_the_beta_law_allows():
    for n in (50, 300, 359, 1000):
        k = allowed_exceedances(n, 0.05, 0.9)
        assert beta.cdf(0.05, k + 1, n - k) >= 0.9 > beta.cdf(0.05, k + 2, n - k - 1)
        assert within_target(k, n, 0.05, 0.9) and not within_target(k + 1, n, 0.05, 0.9)
    assert allowed_exceedances(20, 0.05, 0.9) == 0  # too few samples to show 5%: flag none of them


@pytest.mark.parametrize("n", [300, 1000])
def test_over_many_calibration_sets_the_target_holds_with_the_stated_confidence(n):
    """Uniform clean scores: a threshold that flags k calibration samples sits at the (n - k)-th
    order statistic, and the rate at which it flags new clean inputs is 1 minus that. Over 4,000
    seeded calibration sets, the share where that rate passes 5% must stay under 1 - 0.9, up to
    three binomial standard deviations of the simulation itself."""
    rng, sets, confidence, target = np.random.default_rng(0), 4000, 0.9, 0.05
    k = allowed_exceedances(n, target, confidence)
    thresholds = np.sort(rng.random((sets, n)), axis=1)[:, n - k - 1]
    true_rate = 1.0 - thresholds
    over = float((true_rate > target).mean())
    assert over <= (1 - confidence) + 3 * np.sqrt(confidence * (1 - confidence) / sets)
    assert true_rate.mean() < target  # on average below: the price of holding it per set


def test_upper_bound_is_clopper_pearson():
    assert upper_bound(0, 300) == pytest.approx(1 - 0.05 ** (1 / 300))
    assert upper_bound(15, 300) > 15 / 300 and upper_bound(300, 300) == 1.0


def test_the_upper_bound_is_the_rate_at_which_seeing_so_few_flags_has_five_percent_chance():
    from scipy.stats import binom

    for flagged, n in ((3, 100), (0, 1), (12, 360)):
        assert binom.cdf(flagged, n, upper_bound(flagged, n)) == pytest.approx(0.05, abs=1e-9)
    assert upper_bound(0, 0) == 1.0 and upper_bound(5, 5) == 1.0  # nothing observed / everything flagged
