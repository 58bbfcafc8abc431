"""Static checks of the Kubernetes manifests in deploy/k8s: the base and the GPU overlay rendered like
kustomize and validated against the Kubernetes schemas, the references between their resources
(selectors, ports, probes, the mounted config, TLS and token Secrets), the autoscaler's metric, the
ConfigMap against the shipped config, the overlay's patch, and the renderer's strategic merge.
No cluster is needed."""

from __future__ import annotations

import tomllib

import pytest
import yaml

from tests.deploy.helpers import (
    K8S,
    PROMETHEUS,
    ROOT,
    check_expr,
    container,
    contract,
    pod_spec,
    render_kustomization,
    strategic_merge,
)

OVERLAYS = [K8S / "base", K8S / "overlays" / "gpu"]
# Oldest Kubernetes the manifests target (native gRPC probes: 1.27; preStop sleep: 1.30) and the newest
# schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30.0", "latest"]


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
