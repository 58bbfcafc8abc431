"""The rule that picks the text guard's judges on development data (guard_examples.text_choice):
the largest set whose union keeps clean out-of-domain text within the goal, the detector that flags
the most development texts alone moved to the monitors first."""

from __future__ import annotations

import numpy as np

from guard_examples.text_choice import OUT_OF_DOMAIN_GOAL, choose

N = 4000


def _scores(seed: int, shift: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, N)


def test_a_detector_that_measures_the_domain_watches_and_the_union_of_the_rest_holds():
    calibration = {name: _scores(i, 0.0) for i, name in enumerate(("steady", "quiet", "domain"))}
    # out of domain: "domain" moves far (most texts over its threshold), the others not at all
    development = {"steady": _scores(10, 0.0), "quiet": _scores(11, -0.5), "domain": _scores(12, 3.0)}
    choice = choose(calibration, development, 0.05)
    assert choice["union"]["judges"] == ["quiet", "steady"]
    assert {k: r["judges"] for k, r in choice["detectors"].items()} == {"steady": True, "quiet": True, "domain": False}
    assert choice["detectors"]["domain"]["development"] > 0.5
    assert choice["union"]["development"] <= OUT_OF_DOMAIN_GOAL
    # each detector alone and the union keep the clean calibration rate at the target's side
    assert all(r["calibration"] <= 0.05 for r in choice["detectors"].values())
    assert choice["union"]["calibration"] <= 0.05


def test_detectors_are_kept_while_their_union_holds_even_if_one_alone_is_over_the_goal():
    calibration = {name: _scores(i, 0.0) for i, name in enumerate(("a", "b", "c"))}
    # "c" alone flags about 8% out of domain at its own 5% point, but sharing the budget three ways
    # puts its threshold where it flags about 3%: the union of all three stays near the goal
    development = {"a": _scores(20, -1.0), "b": _scores(21, -1.0), "c": _scores(22, 0.25)}
    choice = choose(calibration, development, 0.05)
    assert choice["detectors"]["c"]["development"] > OUT_OF_DOMAIN_GOAL
    assert choice["union"]["judges"] == ["a", "b", "c"]
    assert choice["union"]["development"] <= OUT_OF_DOMAIN_GOAL


def test_one_detector_is_left_judging_whatever_it_flags():
    calibration = {"only": _scores(0, 0.0)}
    choice = choose(calibration, {"only": _scores(1, 3.0)}, 0.05)
    assert choice["union"]["judges"] == ["only"] and choice["union"]["development"] > OUT_OF_DOMAIN_GOAL
