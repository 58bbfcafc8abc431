"""The digits demo's evaluation plan (guard_examples.evaluation_plan) through `guard evaluate` and a
live gateway, as the README runs it, and the demo triggers as guard's trigger files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guard_examples.paths import ZOO


def test_the_demo_plan_runs_through_guard_evaluate(tmp_path):
    """The plan the README hands to `guard evaluate`: every zoo backdoor with its trigger and target,
    the shipped digits model attacked, and the gateway's own thresholds (the library's tests check
    the report's shape on a plan of their own)."""
    pytest.importorskip("torchattacks")
    from guard.api import EvalOptions, load_plan, run_evaluation
    from guard_examples.evaluation_plan import backdoored_models, write_plan

    plan_path = write_plan(tmp_path / "plan")
    plan = load_plan(plan_path)
    zoo = {d.name: json.loads((d / "poison.json").read_text()) for d in backdoored_models()}
    assert {s.name: s.target for s in plan.backdoored} == {name: poison["target"] for name, poison in zoo.items()}
    assert [s.name for s in plan.attacked] == ["digits"] and plan.attacked[0].detector_network is not None
    results = run_evaluation(
        EvalOptions(
            plan=plan_path,
            samples=24,
            quick=True,
            report_dir=tmp_path / "report",
            workdir=tmp_path / "work",
            attacks=("fgsm",),
            epsilons=(0.3,),
            adaptive_steps=3,
        )
    )
    keys = {row["key"] for row in results["rows"]}
    assert {f"trigger_{name.removeprefix('backdoor_')}" for name in zoo} <= keys
    assert {"fgsm_eps0.3", "adaptive_pgd_eps0.3"} <= keys
    assert all(model["matches_gateway_thresholds"] for model in results["models"].values())


@pytest.mark.parametrize("name", ["backdoor_patch", "backdoor_checkerboard", "backdoor_blend"])
def test_library_trigger_file_replays_the_demo_triggers_exactly(name, tmp_path):
    """guard's mask + pattern file, written by guard_examples.triggers, gives bit-for-bit what the recipe's
    own trigger gives (the zoo models were poisoned with the latter)."""
    from guard.api import load_trigger
    from guard_examples.digits_data import SPLITS, load_split
    from guard_examples.triggers import load_trigger as load_recipe_trigger
    from guard_examples.triggers import write_guard_trigger

    recipe = load_recipe_trigger(ZOO / name / "trigger.npz")
    library = load_trigger(write_guard_trigger(recipe, tmp_path / "trigger.npz"))
    noise = np.random.default_rng(3).random((64, 1, 16, 16), dtype=np.float32)
    for x in [*(load_split(s)[0] for s in SPLITS), noise]:
        want, got = recipe.apply(x), library.apply(x)
        assert got.dtype == want.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # the same bits, not just close
