"""Verdicts on a live gateway, through tritonclient, with thresholds set in the test from scores
measured on this host: trigger verdicts are blocked under enforce like adversarial ones, a
several-row request is judged by its worst row, a score exactly at its threshold flags, the union
rule reports the largest score/threshold ratio, and shadow never explains.

One measuring gateway reads every detector's raw score for a few rows (three clean digits and one
noise image); one more gateway then serves several copies of the demo model, each with thresholds
placed relative to those scores. Thresholds are never compared across hosts.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import copy_demo, running_gateway
from tests.serving.helpers import (
    as_union,
    infer_input,
    noise_rows,
    raw_scores,
    read_config,
    thresholds_as_written,
    verdict,
    write_config,
)

NEVER = 1e9  # a threshold no score of these rows reaches
STRIP_REFERENCES = slice(200, 216)  # held-out rows blended by STRIP (none of the rows judged below)


@pytest.fixture(scope="module")
def rows(held_out):
    """c0, c1, c2: clean digits; noise: an image no detector thinks clean."""
    return {"c0": held_out[0][0:1], "c1": held_out[0][1:2], "c2": held_out[0][2:3], "noise": noise_rows(1)}


@pytest.fixture(scope="module")
def template(tmp_path_factory, held_out):
    """The demo plus a STRIP detector (trigger verdicts), combined as a union."""
    repository = copy_demo(tmp_path_factory.mktemp("verdicts"))
    np.save(repository / "digits" / "strip_references.npy", held_out[0][STRIP_REFERENCES])
    table = read_config(repository)
    as_union(table)
    thresholds_as_written(table)  # every variant's thresholds are set below from scores measured here
    table["detectors"].append(
        {"name": "strip", "type": "strip", "n": 16, "references": "strip_references.npy", "threshold": 1.0}
    )
    write_config(repository, table)
    shutil.rmtree(repository / "digits_fp32")
    return repository


@pytest.fixture(scope="module")
def scores(template, rows):
    """Raw scores per row and detector, measured on this host with the template's detectors."""
    with running_gateway(template) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        return {name: raw_scores(client, x)[0] for name, x in rows.items()}


def model_variant(template, root, name: str, policy: str, thresholds: dict[str, float]) -> None:
    """A copy of the template's digits as model `name`: every detector at NEVER unless given."""
    directory = root / name
    shutil.copytree(template / "digits", directory)
    table = read_config(template)
    table.update(name=name, policy=policy)
    for detector in table["detectors"]:
        detector["threshold"] = thresholds.get(detector["name"], NEVER)
    (directory / "config.toml").unlink()
    write_config(root, table, name)


@pytest.fixture(scope="module")
def gateway(template, scores, tmp_path_factory):
    """One gateway serving every variant below."""
    root = tmp_path_factory.mktemp("variants") / "repository"
    root.mkdir()
    # The detector network has never seen anything like noise: it scores it orders of magnitude
    # above clean digits, so a threshold between them keeps its side whatever the batch around it.
    clean_max = max(scores[c]["detector_net"] for c in ("c0", "c1", "c2"))
    noise = scores["noise"]["detector_net"]
    assert noise > 100 * clean_max, f"noise should stand far above clean rows: {scores}"
    between = math.sqrt(clean_max * noise)  # geometric middle: far from both on a log scale
    margin = scores["c0"]["confidence_margin"]
    variants = {
        "trigger_enforce": ("enforce", {"strip": scores["c0"]["strip"] / 2}),
        "trigger_flag": ("flag", {"strip": scores["c0"]["strip"] / 2}),
        "rows_flag": ("flag", {"detector_net": between}),
        "rows_enforce": ("enforce", {"detector_net": between}),
        "exact": ("flag", {"confidence_margin": margin}),
        "just_above": ("flag", {"confidence_margin": float(np.nextafter(margin, math.inf))}),
        "union": (
            "flag",
            {
                name: value / 2 if name == "bit_depth_2" else value * 100
                for name, value in scores["c0"].items()
                if value > 0
            },
        ),
        "shadow": ("shadow", {name: value / 2 for name, value in scores["c0"].items() if value > 0}),
    }
    for name, (policy, thresholds) in variants.items():
        model_variant(template, root, name, policy, thresholds)
    with running_gateway(root) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        yield client


def infer(client, model: str, x: np.ndarray, **kwargs):
    return client.infer(model, [infer_input(x)], **kwargs)


def blocked(client, model: str, x: np.ndarray) -> str:
    with pytest.raises(InferenceServerException) as info:
        infer(client, model, x)
    assert info.value.status() == "StatusCode.PERMISSION_DENIED", info.value.message()
    return info.value.message()


def test_enforce_blocks_trigger_verdicts(gateway, rows):
    assert verdict(infer(gateway, "trigger_flag", rows["c0"]))[:2] == ("trigger", "strip")
    message = blocked(gateway, "trigger_enforce", rows["c0"])
    assert "verdict trigger" in message and "flagged by strip" in message


def test_a_several_row_request_is_judged_by_its_worst_row(gateway, rows, scores):
    for name in ("c0", "c1", "c2"):  # alone, each clean row is served clean
        assert verdict(infer(gateway, "rows_flag", rows[name]))[0] == "clean"
    clean = np.concatenate([rows["c0"], rows["c1"], rows["c2"]])
    assert verdict(infer(gateway, "rows_flag", clean))[:2] == ("clean", "")
    for position in range(3):  # one noise row anywhere among clean rows flags the whole request
        mixed = np.insert(clean[:2], position, rows["noise"], axis=0)
        name, by, score = verdict(infer(gateway, "rows_flag", mixed))
        assert (name, by) == ("adversarial", "detector_net") and score >= 1.0
        assert "detector_net" in blocked(gateway, "rows_enforce", mixed)


def test_a_score_exactly_at_its_threshold_flags(gateway, rows):
    name, by, score = verdict(infer(gateway, "exact", rows["c0"]))
    assert (name, by, score) == ("adversarial", "confidence_margin", 1.0)
    name, by, score = verdict(infer(gateway, "just_above", rows["c0"]))
    assert (name, by) == ("clean", "") and score < 1.0


def test_union_reports_the_largest_ratio_and_names_only_who_fired(gateway, rows):
    name, by, score = verdict(infer(gateway, "union", rows["c0"]))
    assert (name, by) == ("adversarial", "bit_depth_2")
    assert score == pytest.approx(2.0, rel=1e-9)  # bit_depth_2 at twice its threshold, the rest at 1%


def test_shadow_serves_without_parameters_even_when_asked_to_explain(gateway, rows):
    result = infer(gateway, "shadow", rows["c0"], parameters={"guard_explain": True})
    assert dict(result.get_response().parameters) == {}
    assert result.as_numpy("logits").shape == (1, 10)
    explained = infer(gateway, "union", rows["c0"], parameters={"guard_explain": True})
    assert set(json.loads(explained.get_response().parameters["guard_detector_scores"].string_param)) >= {
        "bit_depth_2",
        "strip",
    }
