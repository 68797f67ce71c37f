"""deploy/k8s: every manifest validates (kubernetes-validate, strict, Kubernetes 1.30), the
kustomizations list exactly the files there, and the gateway is deployed as docs/deploy.md says.

The ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1, Prometheus Operator CRDs) have
no schema in kubernetes-validate: they are skipped there explicitly and checked here and in
test_k8s_monitoring.py. The kustomizations are built in test_k8s_build.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_files import K8S_DIR, K8S_VERSION, k8s_documents, k8s_files, pod_spec

pytestmark = pytest.mark.deploy

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
BASE_DIR = K8S_DIR / "base"


def _docs() -> list[tuple[Path, dict[str, Any]]]:
    return list(k8s_documents())


def _ids(docs: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    return [f"{p.relative_to(K8S_DIR)}:{d['kind']}/{d['metadata']['name']}" for p, d in docs]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        d for _, d in _docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return found


def _gateway() -> dict[str, Any]:
    return _one("Deployment", "mllm-calib-gateway")


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


DOCS = _docs()


@pytest.mark.parametrize(("path", "document"), DOCS, ids=_ids(DOCS))
def test_manifest_is_valid_for_kubernetes(kubernetes_validate, path: Path, document: dict) -> None:
    if (document["apiVersion"], document["kind"]) in CRD_KINDS:
        pytest.skip(f"{document['kind']} is a CRD: no schema in kubernetes-validate")
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_validation_can_fail(kubernetes_validate) -> None:
    broken = yaml.safe_load((BASE_DIR / "gateway-hpa.yaml").read_text())
    broken["spec"]["minReplica"] = 2  # a typo strict validation must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_service_monitor_has_the_operator_required_fields() -> None:
    monitor = _one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = _one("Service", "mllm-calib-gateway")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("directory", [K8S_DIR, BASE_DIR, K8S_DIR / "monitoring"])
def test_kustomization_resources_exist(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        target = directory / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), resource


def test_every_manifest_is_in_a_kustomization_or_an_example() -> None:
    listed: set[Path] = set()
    for kustomization in K8S_DIR.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            listed.add((kustomization.parent / resource).resolve())
    for path in k8s_files():
        assert path.resolve() in listed or path.parent.name == "examples", path
    base = yaml.safe_load((BASE_DIR / "kustomization.yaml").read_text())["resources"]
    assert "servicemonitor.yaml" not in base  # the base applies without the Operator's CRDs
    assert "prometheusrule.yaml" not in base


def test_gateway_has_probes_resources_and_no_replica_count_of_its_own() -> None:
    deployment = _gateway()
    # The HPA owns the count (test_hpa_scales_the_gateway_deployment): `replicas` here would
    # reset it at every `kubectl apply`.
    assert "replicas" not in deployment["spec"]
    (container,) = pod_spec(deployment)["containers"]
    # Readiness is the gateway's own (its store): an engine outage must not empty the Service.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz?exclude=upstream"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    port = container["ports"][0]["containerPort"]
    assert annotations["prometheus.io/port"] == str(port)


def test_the_probe_paths_answer_on_the_real_gateway_with_the_engine_down(tmp_path) -> None:
    """Each probe path of the Deployment, on the real app whose upstream refuses connections:
    liveness/startup and readiness stay 200 (readiness checks only the store)."""
    import socket

    import httpx

    from tests.conftest import start_gateway

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    (container,) = pod_spec(_gateway())["containers"]
    gateway = start_gateway(f"http://127.0.0.1:{dead}/v1", tmp_path / "calib.db")
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                response = client.get(container[probe]["httpGet"]["path"])
                assert response.status_code == 200, (probe, response.text)
            ready = client.get(container["readinessProbe"]["httpGet"]["path"]).json()
            assert ready["checks"] == {"store": "ok"}
            assert client.get("/readyz").status_code == 503  # the full check sees the outage
    finally:
        gateway.server.stop()


def test_no_workload_sets_replicas_next_to_an_hpa() -> None:
    targets = {
        (d["spec"]["scaleTargetRef"]["kind"], d["spec"]["scaleTargetRef"]["name"])
        for _, d in DOCS
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    assert targets
    for _, document in DOCS:
        if (document["kind"], document["metadata"]["name"]) in targets:
            assert "replicas" not in document["spec"], document["metadata"]["name"]


def test_pdb_lets_a_drain_evict_unhealthy_pods() -> None:
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["minAvailable"] < _one("HorizontalPodAutoscaler")["spec"]["minReplicas"]


@pytest.mark.parametrize("kind", ["Deployment", "CronJob"])
def test_pods_run_as_non_root_with_a_read_only_root(kind: str) -> None:
    for _, document in DOCS:
        if document["kind"] != kind or document["metadata"]["name"] == "vllm":
            continue
        spec = pod_spec(document)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # the image's USER
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            env = _env(container)
            assert env["CALIB_DATA_DIR"] in mounts  # writable data dir on a read-only root
            assert "/tmp" in mounts


def test_hpa_scales_the_gateway_deployment() -> None:
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == _gateway()["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2


def test_service_and_pdb_select_the_gateway_pods() -> None:
    labels = _gateway()["spec"]["template"]["metadata"]["labels"]
    assert _one("Service", "mllm-calib-gateway")["spec"]["selector"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_refit_runs_as_a_cronjob_and_the_in_process_scheduler_is_off() -> None:
    cronjob = _one("CronJob", "mllm-calib-refit")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = pod_spec(cronjob)["containers"]
    assert container["args"] == ["refit"]
    (gateway,) = pod_spec(_gateway())["containers"]
    assert container["image"] == gateway["image"]
    assert _env(container)["CALIB_DB"] == _env(gateway)["CALIB_DB"]
    assert _env(gateway)["CALIB_REFIT_ENABLED"] == "false"


def test_secrets_and_config_come_from_the_secret_and_configmap() -> None:
    (container,) = pod_spec(_gateway())["containers"]
    env = _env(container)
    secret = _one("Secret")
    for variable in ("CALIB_DB", "CALIB_ADMIN_KEY"):
        ref = env[variable]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    configmap = _one("ConfigMap")
    config = yaml.safe_load(configmap["data"]["calib.yaml"])
    from service.settings import Settings

    Settings.model_validate(config)  # the models YAML is valid gateway configuration
    volume = next(
        v for v in pod_spec(_gateway())["volumes"] if "configMap" in v
    )  # mounted where CALIB_CONFIG says
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert env["CALIB_CONFIG"] == f"{mount['mountPath']}/calib.yaml"


def test_images_are_pinned() -> None:
    kustomization = yaml.safe_load((BASE_DIR / "kustomization.yaml").read_text())
    tags = {image["name"]: image["newTag"] for image in kustomization["images"]}
    for _, document in DOCS:
        spec = pod_spec(document)
        for container in (spec or {}).get("containers", []):
            image = container["image"]
            if ":" not in image:
                assert tags.get(image, "latest") != "latest", image
            else:
                assert not image.endswith(":latest"), image


def test_network_policy_lets_only_the_gateway_reach_vllm() -> None:
    policy = _one("NetworkPolicy", "vllm-from-gateway-only")
    vllm = _one("Deployment", "vllm")
    vllm_pods = vllm["spec"]["template"]["metadata"]["labels"]
    gateway_pods = _gateway()["spec"]["template"]["metadata"]["labels"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= vllm_pods.items()  # it applies to the vLLM pods ...
    assert not selected.items() <= gateway_pods.items()  # ... and not to the gateway's
    assert policy["metadata"]["namespace"] == vllm["metadata"]["namespace"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]  # one peer: no namespaceSelector, no ipBlock, no other pods
    assert set(peer) == {"podSelector"}
    assert peer["podSelector"]["matchLabels"].items() <= gateway_pods.items()
    assert set(peer["podSelector"]) == {"matchLabels"}
    (port,) = rule["ports"]
    (container,) = pod_spec(vllm)["containers"]
    assert port["port"] in {p["containerPort"] for p in container["ports"]}
    # The port the gateway's upstream URL and the vLLM Service use.
    (gateway,) = pod_spec(_gateway())["containers"]
    assert f":{port['port']}/" in _env(gateway)["CALIB_UPSTREAM"]
