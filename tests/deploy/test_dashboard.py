"""Static checks of the Grafana dashboard in deploy/grafana: its structure and template variables, the
series its panels show, the metric and variable names every query uses against the contract
(docs/metrics.md), and that only an opt-in panel reads the published thresholds. No Grafana is
needed."""

from __future__ import annotations

import re

import pytest

from tests.deploy.helpers import (
    alerting_rules,
    check_expr,
    dashboard_targets,
    load_dashboard,
    recording_rules,
    template_variables,
)


def test_dashboard_structure():
    dashboard = load_dashboard()
    for key, kind in (
        ("title", str),
        ("uid", str),
        ("schemaVersion", int),
        ("panels", list),
        ("templating", dict),
        ("time", dict),
        ("version", int),
    ):
        assert isinstance(dashboard.get(key), kind), key
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    variables = template_variables(dashboard)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"
            assert not check_expr(
                re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", variable["definition"]).replace("$model", ".*")
            )

    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        if "repeat" in panel:
            assert panel["repeat"] in variables
    covered = " ".join(t["expr"] for _, t in dashboard_targets(dashboard))
    for series in (
        "guard_requests_total",
        "guard_request_duration_seconds_bucket",
        "guard_stage_duration_seconds_bucket",
        "guard_batch_size",
        "guard_queue_depth",
        "guard_flagged_total",
        "guard_detector_score_bucket",
    ):
        assert series in covered, f"the dashboard does not show {series}"
    assert any(
        p["type"] == "heatmap" and "guard_detector_score_bucket" in t["expr"] and t.get("format") == "heatmap"
        for p, t in dashboard_targets(dashboard)
    )


@pytest.mark.parametrize("panel_target", dashboard_targets(), ids=lambda pt: f"{pt[0]['id']}{pt[1]['refId']}")
def test_dashboard_queries_use_contracted_names(panel_target):
    panel, target = panel_target
    expr = target["expr"]
    assert expr.strip(), f"panel {panel['title']!r}: empty expr"
    assert target["datasource"]["uid"] == "${datasource}"
    used = {m.group(1) or m.group(2) for m in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", expr)}
    assert used <= set(template_variables()) | {"__rate_interval"}, used
    problems = check_expr(expr)
    assert not problems, f"panel {panel['title']!r}: {problems}"


def test_only_an_opt_in_panel_reads_thresholds():
    """guard_detector_threshold is published only with --publish-thresholds: no variable may depend
    on it, and the one panel that shows it says how to turn it on."""
    for variable in template_variables().values():
        assert "guard_detector_threshold" not in variable.get("definition", ""), variable["name"]
    readers = {p["id"]: p for p, t in dashboard_targets() if "guard_detector_threshold" in t["expr"]}
    for panel in readers.values():
        assert "--publish-thresholds" in panel["description"], panel["title"]
    for rule in recording_rules() + alerting_rules():
        assert "guard_detector_threshold" not in rule["expr"], rule.get("record") or rule.get("alert")
