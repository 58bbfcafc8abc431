"""Static checks of deploy/prometheus: both scrape configs, the rule files and their unit tests through
promtool, which rule files the configs load, the metric names the rules use against the contract
(docs/metrics.md), and that every alert is tested firing and not firing and explained in the README.
No running Prometheus is needed."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.helpers import (
    PROMETHEUS,
    ROOT,
    RULE_TESTS,
    RULES,
    alerting_rules,
    check_expr,
    recording_rules,
    run,
)


def test_promtool_check_config_local(promtool):
    result = run([promtool, "check", "config", str(PROMETHEUS / "prometheus-local.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_kubernetes(promtool, tmp_path):
    """prometheus.yml as shipped. Debian's Prometheus is built without Kubernetes service discovery;
    there the same file is checked with its kubernetes_sd_configs swapped for static_configs (relabel
    rules, rule files and the rest still checked), and the test says so by skipping afterwards."""
    shipped = PROMETHEUS / "prometheus.yml"
    result = run([promtool, "check", "config", str(shipped)])
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    assert "field kubernetes_sd_configs not found" in output, output
    config = yaml.safe_load(shipped.read_text())
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["127.0.0.1:8002"]}]
    config["rule_files"] = [str(PROMETHEUS / f) for f in config["rule_files"]]
    variant = tmp_path / "prometheus.yml"
    variant.write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", str(variant)])
    assert result.returncode == 0, result.stdout + result.stderr
    pytest.skip(
        f"{promtool} has no Kubernetes service discovery (Debian build): checked prometheus.yml "
        "with static_configs in place of kubernetes_sd_configs"
    )


def test_promtool_check_rules(promtool):
    assert RULES
    result = run([promtool, "check", "rules", *map(str, RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool):
    assert RULE_TESTS
    result = run([promtool, "test", "rules", *(p.name for p in RULE_TESTS)], cwd=PROMETHEUS / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_files_are_the_ones_prometheus_loads():
    for name in ("prometheus.yml", "prometheus-local.yml"):
        config = yaml.safe_load((PROMETHEUS / name).read_text())
        assert sorted(PROMETHEUS / f for f in config["rule_files"]) == RULES, name
        assert [j["job_name"] for j in config["scrape_configs"]] == ["guard"], name


def test_rules_use_contracted_metrics_only():
    recorded = {r["record"] for r in recording_rules()}
    for rule in recording_rules() + alerting_rules():
        problems = check_expr(rule["expr"], recorded, extra_metrics={"up"})
        assert not problems, f"{rule.get('record') or rule.get('alert')}: {problems}"
    for rule in recording_rules():
        assert re.fullmatch(r"[a-z_]+:guard_\w+:\w+", rule["record"]), rule["record"]


def test_every_alert_is_unit_tested_firing_and_not_firing():
    fired, quiet = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in alerting_rules()}
    assert alerts == {
        "GuardFlaggedRatioSpike",
        "GuardLatencyP99High",
        "GuardQueueNearFull",
        "GuardDown",
        "GuardCameraFlagRateAboveTarget",
    }
    assert alerts - fired == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested not firing"


def test_every_alert_has_severity_annotations_and_a_runbook_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    deploy_section = readme[readme.index("## Deploy") :] if "## Deploy" in readme else ""
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])
        assert rule["alert"] in deploy_section, f"README's Deploy section does not explain {rule['alert']}"
    assert 'up{job="guard"} == 0' in {r["expr"].strip() for r in alerting_rules()}
