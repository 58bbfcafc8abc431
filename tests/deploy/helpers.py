"""Shared by the deploy tests: where deploy/ lives, the metric contract (docs/metrics.md), PromQL
names and labels, the Grafana dashboard's queries, external tools, and a small kustomize renderer."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.system_tools import ensure_tools

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "guard-dashboard.json"

# Labels a scrape or a query adds on top of the contracted ones.
SCRAPE_LABELS = {"job", "instance", "le", "namespace", "pod", "node"}


# --- the metric contract ------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    labels: frozenset[str]

    def series(self) -> set[str]:
        """The series names this metric exposes."""
        if self.type == "histogram":
            return {f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count"}
        return {self.name}


def contract() -> dict[str, Metric]:
    """The metrics table of docs/metrics.md, by metric name."""
    metrics = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        match = re.match(r"^\|\s*`(guard_\w+)`\s*\|\s*(\w+)\s*\|\s*([^|]*)\|", line)
        if match:
            name, kind, labels = match.groups()
            metrics[name] = Metric(name, kind, frozenset(label.strip() for label in labels.split(",") if label.strip()))
    assert metrics, "docs/metrics.md: no metrics table found"
    return metrics


def contracted_series() -> dict[str, Metric]:
    """Series name (with _bucket/_sum/_count for histograms) -> its metric."""
    return {series: m for m in contract().values() for series in m.series()}


# --- PromQL names and labels --------------------------------------------------------------------

PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "group",
    "count_values",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "vector",
    "scalar",
    "histogram_quantile",
    "abs",
    "clamp_min",
    "clamp_max",
    "label_replace",
    "absent",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "sum_over_time",
    "time",
    "le",
}


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (identifiers that are neither keywords, functions nor labels)."""
    text = _strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # drop selector contents
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # drop range durations
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)", text):
        word = match.group(1)
        following = text[match.end() :].lstrip()[:1]
        if word.lower() in PROMQL_WORDS or following == "(":
            continue
        names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """Label names an expression matches on or groups by."""
    text = _strip_strings(expr)
    labels = set()
    for selector in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector))
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels


def check_expr(expr: str, recorded: set[str] = frozenset(), extra_metrics: set[str] = frozenset()) -> list[str]:
    """Problems with an expression: metric names outside the contract, labels no metric has."""
    series = contracted_series()
    allowed_labels = set().union(*(m.labels for m in contract().values())) | SCRAPE_LABELS
    problems = []
    for name in sorted(metric_names(expr)):
        if name not in series and name not in recorded and name not in extra_metrics:
            problems.append(f"metric {name!r} is not in docs/metrics.md")
    for label in sorted(label_names(expr) - allowed_labels):
        problems.append(f"label {label!r} is not a contracted label")
    return problems


# --- Prometheus rules and the dashboard ---------------------------------------------------------


def load_rules() -> list[dict]:
    """Every rule of deploy/prometheus/rules, with the group and file it comes from."""
    rules = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                rules.append(dict(rule, group=group["name"], file=path.name))
    return rules


def recording_rules() -> list[dict]:
    return [r for r in load_rules() if "record" in r]


def alerting_rules() -> list[dict]:
    return [r for r in load_rules() if "alert" in r]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets(dashboard: dict | None = None) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of every panel, rows included."""
    dashboard = dashboard or load_dashboard()
    found = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel, target))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return found


def template_variables(dashboard: dict | None = None) -> dict[str, dict]:
    dashboard = dashboard or load_dashboard()
    return {v["name"]: v for v in dashboard["templating"]["list"]}


VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str, values: dict[str, str], rate_interval: str = "1m") -> str:
    """Grafana's interpolation of an expression: $var / ${var} / ${var:fmt}, and $__rate_interval."""
    values = {"__rate_interval": rate_interval, "__interval": rate_interval, "__range": rate_interval, **values}

    def replace(match):
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return VARIABLE.sub(replace, expr)


# --- external tools -----------------------------------------------------------------------------


def run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def ensure_prometheus(timeout: float = 300.0) -> tuple[dict[str, str] | None, str]:
    """({"prometheus": path, "promtool": path}, "") or (None, why not) (tests.system_tools)."""
    return ensure_tools(("prometheus", "promtool"), "prometheus", timeout)


# --- kustomize, the subset deploy/k8s uses ------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "patches"}


def render_kustomization(directory: Path) -> list[dict]:
    """Render a kustomization the way `kubectl kustomize` would, for the features deploy/k8s uses:
    resources (files and directories), configMapGenerator (files, name suffixed with a content hash
    and references from pod volumes renamed), and strategic-merge patches from files. Anything else
    is an error, so that a new feature cannot be silently ignored here."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}/kustomization.yaml: the test renderer does not support {sorted(unknown)}"
    resources: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(render_kustomization(path))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)

    renames = {}
    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) <= {"name", "files"}, f"unsupported configMapGenerator keys: {sorted(generator)}"
        data = {}
        for item in generator["files"]:
            key, _, source = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
            data[key] = (directory / source).read_text()
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{generator['name']}-{digest}"
        renames[generator["name"]] = name
        resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
    for resource in resources:
        for volume in resource.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] in renames:
                volume["configMap"]["name"] = renames[volume["configMap"]["name"]]

    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"only strategic-merge patches from files are supported: {patch}"
        for doc in yaml.safe_load_all((directory / patch["path"]).read_text()):
            targets = [
                r for r in resources if r["kind"] == doc["kind"] and r["metadata"]["name"] == doc["metadata"]["name"]
            ]
            assert len(targets) == 1, f"patch {patch['path']}: no single {doc['kind']}/{doc['metadata']['name']}"
            merged = strategic_merge(targets[0], doc)
            resources[resources.index(targets[0])] = merged
    return resources


def strategic_merge(base, patch):
    """Maps merge recursively; lists of maps that all carry `name` merge by name (containers,
    volumes, ports, env); other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and base
        and patch
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        merged = [copy.deepcopy(i) for i in base]
        names = [i["name"] for i in merged]
        for item in patch:
            if item["name"] in names:
                index = names.index(item["name"])
                merged[index] = strategic_merge(merged[index], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def pod_spec(resources: list[dict]) -> dict:
    (deployment,) = [r for r in resources if r["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]


def container(resources: list[dict], name: str) -> dict:
    (found,) = [c for c in pod_spec(resources)["containers"] if c["name"] == name]
    return found
