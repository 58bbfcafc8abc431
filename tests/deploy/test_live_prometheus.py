"""A real Prometheus scrapes a real gateway: every recording rule and every dashboard query returns
data, and the alert rules evaluate cleanly on live series.

The gateway serves a copy of the demo repository in which digits' first detector has a hair-trigger
threshold (every digits request is flagged) while digits_fp32 keeps its calibrated thresholds, and it
gets clean, noisy and invalid traffic from tritonclient. Prometheus (the `prometheus` binary,
installed with apt-get when missing and running as root, else the module skips) runs on a free
loopback port with deploy/prometheus/prometheus-local.yml, rewritten to scrape the gateway every second.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from tritonclient.utils import InferenceServerException

from tests.conftest import copy_demo, running_gateway
from tests.deploy.helpers import (
    PROMETHEUS,
    RULES,
    dashboard_targets,
    load_rules,
    recording_rules,
    substitute,
    template_variables,
)

pytestmark = pytest.mark.timeout(420)  # includes a first-time apt-get install of prometheus

MODELS = ("digits", "digits_fp32")
WAIT_SECONDS = 20.0
TRAFFIC_LIMIT_SECONDS = 90.0  # traffic runs until Prometheus has seen enough of it, at most this long
# Rates and quantiles need two scrapes that saw a counter rise: traffic goes on until every
# model's OK and INVALID_ARGUMENT counts have changed twice in Prometheus' eyes (a subquery at
# the 1 s scrape interval), however slowly this host serves or scrapes.
SEEN_RISING = (
    f'count(changes((sum by (model, code) (guard_requests_total{{job="guard"}}))[1m:1s]) >= 2) >= {2 * len(MODELS)}'
)


def first_threshold_hair_trigger(text: str) -> str:
    return re.sub(r"^threshold = .*$", "threshold = 1e-9", text, count=1, flags=re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def wait_for(self, expr: str, check=bool, timeout: float = WAIT_SECONDS) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if check(result) or time.monotonic() > deadline:
                return result
            time.sleep(0.25)


def values(result: list[dict]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


@contextlib.contextmanager
def prometheus_process(binary: str, tmp_path, metrics_port: int):
    config = yaml.safe_load((PROMETHEUS / "prometheus-local.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {process.returncode}: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
                )
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prometheus did not become ready: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def drive_traffic(url: str, x: np.ndarray, enough) -> int:
    """Clean, noisy and invalid requests to both models until enough() (asked every half second);
    returns how many were sent."""
    rng = np.random.default_rng(0)
    sent, i = 0, 0
    began = next_check = time.monotonic()
    with triton.InferenceServerClient(url) as client:

        def infer(model, array):
            tensor = triton.InferInput("input", list(array.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            return client.infer(model, [tensor])

        while True:
            if time.monotonic() >= next_check:
                if enough():
                    return sent
                assert time.monotonic() - began < TRAFFIC_LIMIT_SECONDS, "prometheus never saw the traffic rise"
                next_check = time.monotonic() + 0.5
            for model in MODELS:
                rows = 1 + i % 2
                start = (i * 2) % (len(x) - 2)
                infer(model, x[start : start + rows])  # clean
                sent += 1
                # Noise is often flagged; digits_fp32 gets little (calibrated: stays under the alert).
                if model == "digits" or i % 20 == 19:
                    infer(model, rng.uniform(0, 1, (1, 1, 16, 16)))
                    sent += 1
                if i % 5 == 0:  # invalid: verdict none
                    bad = np.full((1, 1, 16, 16), 7.0 if model == "digits" else np.nan, np.float32)
                    with pytest.raises(InferenceServerException):
                        infer(model, bad)
                    sent += 1
            i += 1


@pytest.fixture(scope="module")
def live(prometheus_tools, tmp_path_factory, held_out):
    tmp_path = tmp_path_factory.mktemp("live_prometheus")
    repository = copy_demo(tmp_path, first_threshold_hair_trigger)
    # Thresholds published, as a gateway must be for the dashboard's thresholds panel (opt-in).
    with (
        running_gateway(repository, publish_thresholds=True) as gateway,
        prometheus_process(prometheus_tools["prometheus"], tmp_path, gateway.server.metrics_port) as prom,
    ):
        # The gateway's gauges are scraped before any traffic, so rates start from a sample.
        assert prom.wait_for('up{job="guard"} == 1'), "prometheus never scraped the gateway"
        sent = drive_traffic(gateway.grpc_url, held_out[0], lambda: bool(prom.query(SEEN_RISING)))
        # Wait until a scrape has seen every request, then for the rules to evaluate on it.
        total = prom.wait_for('sum(guard_requests_total{job="guard"})', lambda r: r and float(r[0]["value"][1]) == sent)
        assert total and float(total[0]["value"][1]) == sent, f"sent {sent}, scraped {total}"
        yield prom


@pytest.mark.parametrize("rule", recording_rules(), ids=lambda r: r["record"])
def test_recording_rule_returns_data(live, rule):
    result = live.query(rule["expr"])
    assert result, f"{rule['record']}: {rule['expr']} returned nothing"
    assert any(math.isfinite(v) for v in values(result)), f"{rule['record']}: no finite value in {result}"
    labels = {tuple(sorted(s["metric"].items())) for s in result}
    if "model" in rule["record"].split(":")[0]:
        assert {dict(label)["model"] for label in labels} == set(MODELS), labels
    # The rule itself ran in Prometheus and recorded the same series.
    recorded = live.wait_for(rule["record"], lambda r: len(r) == len(result))
    assert len(recorded) == len(result), f"{rule['record']}: recorded {recorded}"


def dashboard_values(live) -> list[dict[str, str]]:
    """The values a dashboard viewer can pick: each model alone and All (Grafana's allValue), crossed
    with each detector the detector variable then lists (the heatmap repeats per detector)."""
    picks = []
    for model in (*MODELS, ".*"):
        detectors = label_values(live, template_variables()["detector"]["definition"], {"model": model})
        assert detectors, f"no detectors for model {model}"
        picks += [{"model": model, "detector": detector, "datasource": "prometheus"} for detector in detectors]
    return picks


def label_values(live, definition: str, values: dict[str, str]) -> list[str]:
    """Grafana's label_values(selector, label) variable query, through the label values API."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
    assert match, definition
    return live.get(f"/api/v1/label/{match.group(2)}/values", **{"match[]": substitute(match.group(1), values)})


def test_dashboard_variables_resolve(live):
    for name, variable in template_variables().items():
        if variable["type"] != "query":
            continue
        found = label_values(live, variable["definition"], {"model": ".*"})
        assert found, f"variable {name}: {variable['definition']} lists nothing"
        if name == "model":
            assert set(found) == set(MODELS)


@pytest.mark.parametrize("panel_target", dashboard_targets(), ids=lambda pt: f"{pt[0]['id']}{pt[1]['refId']}")
def test_dashboard_query_returns_data(live, panel_target):
    panel, target = panel_target
    for expr in dict.fromkeys(substitute(target["expr"], v) for v in dashboard_values(live)):
        result = live.query(expr)
        assert result, f"panel {panel['title']!r}: {expr} returned nothing"


def test_rules_are_healthy_and_alerts_follow_the_traffic(live):
    groups = live.get("/api/v1/rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r.get("record") or r.get("alert") for r in load_rules()}
    assert {g["file"] for g in groups} == {str(p) for p in RULES}
    deadline = time.monotonic() + WAIT_SECONDS
    while any(r["health"] != "ok" for r in loaded.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        loaded = {r["name"]: r for g in live.get("/api/v1/rules")["groups"] for r in g["rules"]}
    unhealthy = {name: (r["health"], r.get("lastError")) for name, r in loaded.items() if r["health"] != "ok"}
    assert not unhealthy

    # digits flags every request: its spike alert goes pending (it would fire after 5 minutes). The
    # gateway is up and digits_fp32 keeps its calibrated thresholds, so neither of those is active.
    def active():
        return {
            (a["labels"]["alertname"], a["labels"].get("model"), a["state"])
            for a in live.get("/api/v1/alerts")["alerts"]
        }

    deadline = time.monotonic() + WAIT_SECONDS
    while ("GuardFlaggedRatioSpike", "digits", "pending") not in active() and time.monotonic() < deadline:
        time.sleep(0.5)
    alerts = active()
    assert ("GuardFlaggedRatioSpike", "digits", "pending") in alerts
    assert not {a for a in alerts if a[0] == "GuardDown" or a[2] == "firing"}, alerts
    ratios = {s["metric"]["model"]: s["value"][1] for s in live.query("model:guard_flagged_requests:ratio_rate5m")}
    assert ("GuardFlaggedRatioSpike", "digits_fp32", "pending") not in alerts, (alerts, ratios)
