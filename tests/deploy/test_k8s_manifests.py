"""deploy/k8s: every manifest validates (kubernetes-validate, strict, Kubernetes 1.30), the
kustomizations list exactly the files there, and the gateway is deployed as DESIGN §6 says.

The ServiceMonitor (monitoring.coreos.com/v1, a Prometheus Operator CRD) has no schema in
kubernetes-validate: it is skipped there explicitly and its required fields are checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_files import K8S_DIR, K8S_VERSION, k8s_documents, k8s_files, pod_spec

pytestmark = pytest.mark.deploy

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


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


@pytest.fixture(scope="module")
def kubernetes_validate():  # type: ignore[no-untyped-def]
    return pytest.importorskip("kubernetes_validate")


DOCS = _docs()


@pytest.mark.parametrize(("path", "document"), DOCS, ids=_ids(DOCS))
def test_manifest_is_valid_for_kubernetes(kubernetes_validate, path: Path, document: dict) -> None:
    if (document["apiVersion"], document["kind"]) in CRD_KINDS:
        pytest.skip(f"{document['kind']} is a CRD: no schema in kubernetes-validate")
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_validation_can_fail(kubernetes_validate) -> None:
    broken = yaml.safe_load((K8S_DIR / "gateway-hpa.yaml").read_text())
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


@pytest.mark.parametrize("directory", [K8S_DIR, K8S_DIR / "monitoring"])
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
    base = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"]
    assert "servicemonitor.yaml" not in base  # the base applies without the Operator's CRDs


def test_gateway_runs_at_least_two_replicas_with_probes_and_resources() -> None:
    deployment = _gateway()
    assert deployment["spec"]["replicas"] >= 2
    (container,) = pod_spec(deployment)["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    port = container["ports"][0]["containerPort"]
    assert annotations["prometheus.io/port"] == str(port)


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
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    tags = {image["name"]: image["newTag"] for image in kustomization["images"]}
    for _, document in DOCS:
        spec = pod_spec(document)
        for container in (spec or {}).get("containers", []):
            image = container["image"]
            if ":" not in image:
                assert tags.get(image, "latest") != "latest", image
            else:
                assert not image.endswith(":latest"), image
