"""One `guard evaluate --plan` of an image plan (a detection model whose input is BYTES frames, attacks
judged by the hide / appear / move rules) through a real gateway on port 0 and the real CLI entry: the
repository it serves, each rule's eligible and successful frames, the example sheets, and the report's
rates, which must agree with the gateway's own verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.tools.test_evaluate_images import LARGE, PERSONS, SMALL, TEST, write_plan


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[int, dict, Path]:
    """`guard evaluate --plan` once, through the CLI's own entry (a real gateway on port 0)."""
    pytest.importorskip("matplotlib")
    from guard.tools.cli import main

    root = tmp_path_factory.mktemp("image-plan")
    plan = write_plan(root)
    report = root / "report"
    code = main(["evaluate", "--plan", str(plan), "--report-dir", str(report), "--workdir", str(root / "work")])
    return code, json.loads((report / "results.json").read_text()), report


def _rows(results: dict) -> dict[str, dict]:
    return {row["key"]: row for row in results["rows"]}


def test_the_evaluation_repository_serves_the_directory_under_the_plans_name_under_flag(evaluated):
    """The copy a plain `guard serve --repository` (or --connect) would serve: the plan's name, policy
    flag whatever the directory said (enforce would refuse flagged frames and return no boxes)."""
    import tomllib

    _, _, report = evaluated
    config = tomllib.loads((report.parent / "work" / "repository" / "detector" / "config.toml").read_text())
    assert (config["name"], config["policy"]) == ("detector", "flag")
    assert all("threshold" in d for d in config["detectors"])  # calibrated where it is served


def test_hiding_succeeds_only_on_frames_where_the_person_was_found_and_only_with_budget(evaluated):
    code, results, _ = evaluated
    assert code == 0
    rows = _rows(results)
    small, large = rows[f"hide_pgd_eps{SMALL:g}"], rows[f"hide_pgd_eps{LARGE:g}"]
    # Eligible: the test frames on which the served model found a person (all that carry one).
    assert small["eligible"] == large["eligible"] == PERSONS and large["n"] == len(TEST)
    assert small["successful"] == 0 and small["asr"] == 0.0  # 2 levels cannot move a cell's logit by 2
    assert large["successful"] == PERSONS and large["asr"] == 1.0
    assert large["surrogate_asr"] == 1.0  # the same success on the model run as torch (white-box)
    assert large["rule"] == {"name": "hide", "class": 0, "iou": 0.5}


def test_each_row_with_eligible_frames_has_an_example_sheet_of_them(evaluated):
    from PIL import Image

    from guard.tools.evaluation.sheets import TILE

    _, results, report = evaluated
    rows = _rows(results)
    for key in (f"hide_pgd_eps{SMALL:g}", f"hide_pgd_eps{LARGE:g}"):
        sheet = Image.open(report / rows[key]["examples"])
        # Two tiles a frame (clean, attacked), one frame a row: four of the eligible frames.
        assert sheet.size == (2 * TILE, 4 * TILE), key
    # The large budget's sheet shows successful frames: the attacked tile's frame is the
    # adversarial colour where the gateway flagged it, and differs from the clean tile.
    sheet = np.asarray(Image.open(report / rows[f"hide_pgd_eps{LARGE:g}"]["examples"]))
    clean, attacked = sheet[:TILE, :TILE], sheet[:TILE, TILE:]
    assert not np.array_equal(clean[20:-20, 20:-20], attacked[20:-20, 20:-20])
    assert {p.name for p in report.glob("examples_*.png")} == {r["examples"] for r in rows.values() if "examples" in r}


def test_appear_and_move_count_their_own_eligible_frames(evaluated):
    _, results, _ = evaluated
    rows = _rows(results)
    appear, move = rows[f"appear_pgd_eps{LARGE:g}"], rows[f"move_pgd_eps{LARGE:g}"]
    assert appear["eligible"] == len(TEST) - PERSONS  # frames without a person: one can be made to appear
    assert appear["successful"] == appear["eligible"]
    assert move["eligible"] == len(TEST) - 4  # frames with any box: the four empty frames have none
    assert move["successful"] == move["eligible"]  # every clean box stops being found at 64 levels


def test_report_shares_the_classifier_shape_with_rates_in_the_unit_interval(evaluated):
    _, results, report = evaluated
    (model,) = results["models"].values()
    clean = model["clean_flag_rate"]
    assert clean["n"] == model["n_test"] == len(TEST) and 0 <= clean["flagged"] <= clean["n"]
    assert clean["rate"] == clean["flagged"] / clean["n"] and clean["rate"] <= clean["upper_95"] <= 1.0
    assert model["n_calibration"] == 40 and model["output_kind"] == "detection"
    assert model["clean_accuracy"] is None and model["matches_gateway_thresholds"]
    assert set(model["detectors"]) == {"box_consistency", "patch"}
    table = (report / "results.md").read_text()
    for row in results["rows"]:
        served = row["served"]
        assert served["successful"] == row["successful"] and 0 <= served["detected"] <= served["successful"]
        if row["successful"]:
            assert served["rate"] == served["detected"] / served["successful"]
        else:
            assert served["rate"] is None  # nothing to measure: a dash, never a zero
        for values in row["scorers"].values():
            assert all(v is None or 0.0 <= v <= 1.0 for v in values.values())
        assert row["asr"] is None or 0.0 <= row["asr"] <= 1.0
        assert f"| {row['attack']} | {row['eps']:g} | detector |" in table
        if row["successful"]:
            assert (report / f"roc_{row['key']}.png").is_file()
    assert f"({clean['flagged']}/{clean['n']}, ≤ " in table
    # The served verdicts are the gateway's ensemble at its 5% thresholds, which the refitted scorer
    # reproduces (matches_gateway_thresholds): the two measurements must agree row by row.
    assert clean["rate"] == model["clean_fpr"]["ensemble"]["0.05"]
    for row in results["rows"]:
        assert row["served"]["rate"] == row["scorers"]["ensemble"]["det@0.05"]
    assert results["meta"]["samples"] == len(TEST) and any("PNG" in note for note in results["meta"]["notes"])
