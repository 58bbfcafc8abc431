"""Static checks of deploy/: Dockerfiles (hadolint and the image contract), Kubernetes manifests
(rendered like kustomize, validated against the Kubernetes schemas), Prometheus config and rules
(promtool), and the Grafana dashboard. No Docker engine, cluster or Grafana is needed."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import tomllib

import pytest
import yaml

from tests.deploy.helpers import (
    DOCKER,
    K8S,
    PROMETHEUS,
    ROOT,
    RULE_TESTS,
    RULES,
    alerting_rules,
    check_expr,
    container,
    contract,
    dashboard_targets,
    load_dashboard,
    pod_spec,
    recording_rules,
    render_kustomization,
    strategic_merge,
    template_variables,
)

DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
OVERLAYS = [K8S / "base", K8S / "overlays" / "gpu"]
# Oldest Kubernetes the manifests target (native gRPC probes: 1.27; preStop sleep: 1.30) and the newest
# schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30.0", "latest"]


def run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


# --- container images ---------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(hadolint, dockerfile):
    result = run([hadolint, "--no-color", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def instructions(dockerfile):
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip()
    ]


def final_stage(dockerfile):
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def dockerignore_allows(rules, path):
    """Docker's .dockerignore semantics: the last matching pattern wins; `!` re-includes."""
    allowed = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            allowed = negate
    return allowed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_contract(dockerfile):
    stage = final_stage(dockerfile)
    ops = dict(stage)  # the last of each instruction in the runtime stage
    user = ops["USER"].split(":")[0]
    assert user not in {"root", "0"}, "the image must run as a non-root user"
    assert set(ops["EXPOSE"].split()) == {"8001", "8002"}
    options, _, probe = ops["HEALTHCHECK"].partition("CMD")
    assert "healthcheck.py" in probe and "--start-period" in options  # loading the repository takes seconds
    command = yaml.safe_load(ops["ENTRYPOINT"]) + yaml.safe_load(ops["CMD"])  # exec form: JSON arrays
    assert command[:2] == ["guard", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--grpc-port") + 1] == "8001"
    assert command[command.index("--metrics-port") + 1] == "8002"
    # /metrics answers outside the container (the guard binds it to 127.0.0.1 unless told); no reflection.
    assert command[command.index("--metrics-host") + 1] == "0.0.0.0"
    assert "--no-reflection" in command
    # The package's default repository is relative to its source tree, so an installed image must name one.
    assert command[command.index("--repository") + 1] == "/models"
    copies = [args for op, args in stage if op == "COPY" and "--from=" not in args]
    assert any(shlex.split(c)[-1] == "/models" for c in copies), "the image must carry the model repository"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_lets_in_what_the_image_copies(dockerfile):
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name}: BuildKit's per-Dockerfile ignore file is missing"
    rules = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    sources = []
    for op, args in instructions(dockerfile):
        if op == "COPY" and "--from=" not in args:
            sources += [s for s in shlex.split(args)[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
        assert dockerignore_allows(rules, source), f"{ignore.name} keeps {source} out of the build context"
    for unwanted in (".venv", ".git", "results", "examples/guard_examples/zoo", "tests", "guard/__pycache__"):
        assert not dockerignore_allows(rules, unwanted), f"{ignore.name} lets {unwanted} into the build context"


def test_cuda_image_swaps_in_onnxruntime_gpu():
    text = (DOCKER / "Dockerfile.cuda").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\w.-]+-runtime-", text, re.M)
    assert "onnxruntime-gpu==" in text and "uninstall -y onnxruntime" in text
    assert "download.pytorch.org/whl/cpu" in (DOCKER / "Dockerfile").read_text()


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.relative_to(K8S).as_posix())
def rendered(request):
    return request.param, render_kustomization(request.param)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(rendered, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    _, resources = rendered
    assert {r["kind"] for r in resources} == {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for resource in resources:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{resource['kind']}/{resource['metadata']['name']} (Kubernetes {version}): "
                f"{'.'.join(map(str, exc.path))}: {exc.message}"
            )


def test_manifests_refer_to_each_other(rendered):
    directory, resources = rendered
    by_kind = {r["kind"]: r for r in resources}
    deployment, service = by_kind["Deployment"], by_kind["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    target = by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])

    spec = pod_spec(resources)
    ports = [p for c in spec["containers"] for p in c.get("ports", [])]
    assert len({p["containerPort"] for p in ports}) == len(ports), "containers share the pod's ports"
    guard = container(resources, "guard")
    guard_ports = {p["name"]: p["containerPort"] for p in guard["ports"]}
    assert guard_ports == {"grpc": 8001, "metrics": 8002}
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("grpc", 8001, "grpc"),
        ("metrics", 8002, "metrics"),
    }

    # Probes over TLS: the image's health check script on "" (the server) and the model, which the
    # ConfigMap names (Kubernetes' native gRPC probe cannot speak TLS).
    (config_map,) = [r for r in resources if r["kind"] == "ConfigMap"]
    config = tomllib.loads(config_map["data"]["config.toml"])
    probe = ["python", "/opt/guard/healthcheck.py"]
    assert guard["livenessProbe"]["exec"]["command"] == [*probe, ""]
    assert guard["startupProbe"]["exec"]["command"] == [*probe, ""]
    assert guard["readinessProbe"]["exec"]["command"] == [*probe, config["name"]]

    # The ConfigMap reaches the guard as <repository>/<model>/config.toml.
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in guard["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    repository = guard["args"][guard["args"].index("--repository") + 1]
    assert mount["mountPath"] == f"{repository}/{config['name']}/config.toml" and mount["subPath"] == "config.toml"
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{c['name']} mounts an undefined volume {m['name']}"
    check_transport_security(guard, volumes)

    for c in spec["containers"]:
        assert c["resources"]["requests"] and c["resources"]["limits"], f"{c['name']} needs requests and limits"
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    # The placeholder model server stays clear of the guard's ports and does not gate readiness.
    model_server = container(resources, "model-server")
    assert "readinessProbe" not in model_server
    assert all(p["containerPort"] not in (8001, 8002) for p in model_server["ports"])


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, name
    return args[args.index(name) + 1]


def secret_file(guard, volumes, path: str) -> tuple[str, str]:
    """(Secret name, key) that `path` in the guard container reads; the mount must be a directory,
    since a subPath mount never sees a renewed Secret."""
    for mount in guard["volumeMounts"]:
        directory = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(directory) and "secret" in volumes[mount["name"]]:
            assert "subPath" not in mount and mount["readOnly"] is True, mount
            secret = volumes[mount["name"]]["secret"]
            name = path[len(directory) :]
            keys = {item["path"]: item["key"] for item in secret.get("items", [])} or {name: name}
            assert name in keys, f"{path}: the Secret {secret['secretName']} does not project it"
            return secret["secretName"], keys[name]
    raise AssertionError(f"{path} is on no Secret volume")


def check_transport_security(guard, volumes) -> None:
    """TLS with client certificates and bearer tokens from Secrets, the probes over the same TLS,
    reflection off, /metrics on its own address."""
    args = guard["args"]
    files = {
        name: secret_file(guard, volumes, flag(args, name)) for name in ("--tls-cert", "--tls-key", "--tls-client-ca")
    }
    assert files == {
        "--tls-cert": ("guard-tls", "tls.crt"),
        "--tls-key": ("guard-tls", "tls.key"),
        "--tls-client-ca": ("guard-tls", "ca.crt"),
    }
    assert secret_file(guard, volumes, flag(args, "--auth-tokens")) == ("guard-auth-tokens", "tokens")
    assert "--no-reflection" in args and "--reflection" not in args and "--publish-thresholds" not in args
    assert flag(args, "--metrics-host") == "0.0.0.0"  # Prometheus scrapes the pod's address
    env = {e["name"]: e.get("value") for e in guard["env"]}
    assert env["GUARD_HEALTH_TLS_CA"] == flag(args, "--tls-client-ca")
    assert (env["GUARD_HEALTH_TLS_CERT"], env["GUARD_HEALTH_TLS_KEY"]) == (
        flag(args, "--tls-cert"),
        flag(args, "--tls-key"),
    )
    assert env.get("GUARD_HEALTH_ADDRESS", "127.0.0.1:8001").endswith(":8001") and env["GUARD_HEALTH_TLS_SERVER_NAME"]
    assert "GUARD_AUTH_TOKENS" not in env  # tokens come from the file, not the environment


def test_hpa_scales_on_a_contracted_metric_the_adapter_serves():
    resources = render_kustomization(K8S / "base")
    (hpa,) = [r for r in resources if r["kind"] == "HorizontalPodAutoscaler"]
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert names == {"guard_queue_depth"} and "guard_queue_depth" in contract()
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert names <= served
    for rule in adapter["rules"]["custom"]:
        assert not check_expr(rule["seriesQuery"])
    # The adapter maps pods through the labels prometheus.yml attaches.
    relabel = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]["relabel_configs"]
    attached = {r.get("target_label") for r in relabel}
    assert {"namespace", "pod"} <= attached


def test_configmap_is_the_shipped_digits_config_and_loads(tmp_path):
    from guard.serving.repository import load_repository

    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (source,) = [f.split("=", 1)[1] for g in base["configMapGenerator"] for f in g["files"]]
    shipped = ROOT / "examples" / "guard_examples" / "repository" / "digits" / "config.toml"
    deployed = (K8S / "base" / source).read_text()
    assert deployed == shipped.read_text(), (
        f"deploy/k8s/base/{source} differs from {shipped.relative_to(ROOT)}, whose thresholds belong to the "
        f"model.onnx baked into the image: cp {shipped.relative_to(ROOT)} deploy/k8s/base/{source}"
    )
    # And it loads as the container would: the image's repository with the mounted config on top.
    import shutil

    repository = tmp_path / "models"
    shutil.copytree(shipped.parent, repository / "digits")
    (repository / "digits" / "config.toml").write_text(deployed)
    assert [c.name for c in load_repository(repository)] == ["digits"]


def test_gpu_overlay_patches_image_and_gpu_only():
    base, gpu = render_kustomization(K8S / "base"), render_kustomization(K8S / "overlays" / "gpu")
    guard_base, guard_gpu = container(base, "guard"), container(gpu, "guard")
    assert guard_gpu["image"] == guard_base["image"] + "-cuda"
    assert guard_gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in guard_base["resources"]["limits"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(gpu)["tolerations"])
    # Everything the patch does not name is the base's: probes, args, mounts, the neighbour container.
    for key in ("args", "ports", "livenessProbe", "readinessProbe", "volumeMounts", "securityContext"):
        assert guard_gpu[key] == guard_base[key], key
    assert guard_gpu["startupProbe"]["exec"] == guard_base["startupProbe"]["exec"]
    assert guard_gpu["env"] == guard_base["env"]
    assert container(gpu, "model-server") == container(base, "model-server")


def test_strategic_merge_merges_named_lists():
    base = {"containers": [{"name": "a", "image": "x", "ports": [1]}, {"name": "b", "image": "y"}]}
    patch = {"containers": [{"name": "a", "image": "z"}, {"name": "c", "image": "w"}]}
    assert strategic_merge(base, patch) == {
        "containers": [
            {"name": "a", "image": "z", "ports": [1]},
            {"name": "b", "image": "y"},
            {"name": "c", "image": "w"},
        ]
    }


# --- Prometheus ---------------------------------------------------------------------------------


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


# --- Grafana ------------------------------------------------------------------------------------


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
