"""The rule that picks the text guard's judges on development data (guard_examples.text_choice):
the largest set whose union keeps clean out-of-domain text within the goal; among sets of one size,
the one that flags the fewest development texts."""

from __future__ import annotations

import numpy as np

from guard_examples.text_choice import OUT_OF_DOMAIN_GOAL, choose

N = 4000


def _scores(seed: int, shift: float, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, n)


def test_a_detector_that_measures_the_domain_watches_and_the_union_of_the_rest_holds():
    calibration = {name: _scores(i, 0.0) for i, name in enumerate(("steady", "quiet", "domain"))}
    # out of domain: "domain" moves far (most texts over its threshold), the others not at all
    development = {"steady": _scores(10, 0.0), "quiet": _scores(11, -0.5), "domain": _scores(12, 3.0)}
    choice = choose(calibration, development, 0.05)
    assert set(choice["union"]["judges"]) == {"quiet", "steady"}
    assert {k: r["judges"] for k, r in choice["detectors"].items()} == {"steady": True, "quiet": True, "domain": False}
    assert choice["detectors"]["domain"]["development"] > 0.5
    assert choice["union"]["development"] <= OUT_OF_DOMAIN_GOAL


def test_detectors_are_kept_while_their_union_holds_even_if_one_alone_is_over_the_goal():
    calibration = {name: _scores(i, 0.0) for i, name in enumerate(("a", "b", "c"))}
    # "c" alone flags about 11% out of domain at its own 5% point (binomial sd 0.5 points at N), but
    # sharing the budget three ways puts its threshold where it flags about 5%: all three judge
    development = {"a": _scores(20, -1.0), "b": _scores(21, -1.0), "c": _scores(22, 0.5)}
    choice = choose(calibration, development, 0.05)
    assert choice["detectors"]["c"]["development"] > OUT_OF_DOMAIN_GOAL
    assert set(choice["union"]["judges"]) == {"a", "b", "c"}
    assert choice["union"]["development"] <= OUT_OF_DOMAIN_GOAL


def test_of_two_sets_that_hold_the_one_flagging_fewer_judges():
    # Measured at these shifts (binomial sd about 0.13 points at 40,000 rows): all three 7.2%, {b, c}
    # 10.0%, {a, c} 5.8%, {a, b} 4.5% of the development texts; both pairs with "a" hold the goal.
    n = 40_000
    calibration = {name: _scores(i, 0.0, n) for i, name in enumerate(("a", "b", "c"))}
    development = {"a": _scores(40, -3.0, n), "b": _scores(41, 0.25, n), "c": _scores(42, 0.38, n)}
    choice = choose(calibration, development, 0.05)
    assert set(choice["union"]["judges"]) == {"a", "b"}
    assert 0.04 < choice["union"]["development"] < 0.05


def test_one_detector_is_left_judging_whatever_it_flags():
    calibration = {"only": _scores(0, 0.0)}
    choice = choose(calibration, {"only": _scores(1, 3.0)}, 0.05)
    assert choice["union"]["judges"] == ["only"] and choice["union"]["development"] > OUT_OF_DOMAIN_GOAL


def test_a_baseline_watches_even_when_it_would_hold():
    calibration = {"spelling": _scores(0, 0.0), "robust_density": _scores(1, 0.0)}
    development = {"spelling": _scores(2, 0.0), "robust_density": _scores(3, -3.0)}  # never fires
    choice = choose(calibration, development, 0.05)
    assert choice["union"]["judges"] == ["spelling"]
    assert not choice["detectors"]["robust_density"]["judges"]
