"""The kustomizations build: with tests/deploy/kustomize.py (always) and, where a `kubectl` is
installed, with `kubectl kustomize` too, and the two agree. Every built object validates.

kubectl is not installed by .ci/run (no Debian package on bookworm); the reader-based build
keeps the check on machines without it, and the comparison keeps that build honest.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_files import K8S_DIR, K8S_VERSION
from tests.deploy.kustomize import KustomizeError, build, index

pytestmark = pytest.mark.deploy

KUSTOMIZATIONS = [K8S_DIR, K8S_DIR / "base", K8S_DIR / "monitoring"]
CRD_GROUP = "monitoring.coreos.com/v1"
NAMESPACE = "mllm-calib"


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(K8S_DIR.parent)) for p in paths]


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not installed: the reader-based build is checked alone")
    return found


def _kubectl_kustomize(kubectl: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )


def _normalized(node: Any) -> Any:
    """Whitespace runs collapsed: go-yaml and PyYAML fold `>-` scalars with deeper-indented lines
    differently (an extra blank line), which changes no PromQL or text meaning."""
    if isinstance(node, str):
        return re.sub(r"\s+", " ", node).strip()
    if isinstance(node, list):
        return [_normalized(item) for item in node]
    if isinstance(node, dict):
        return {key: _normalized(value) for key, value in node.items()}
    return node


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_ids(KUSTOMIZATIONS))
def test_kubectl_kustomize_builds_what_the_reader_builds(directory: Path) -> None:
    result = _kubectl_kustomize(_kubectl(), directory)
    assert result.returncode == 0, result.stderr
    theirs = index([doc for doc in yaml.safe_load_all(result.stdout) if doc])
    ours = index(build(directory))
    assert set(ours) == set(theirs)
    for key, obj in ours.items():
        assert _normalized(obj) == _normalized(theirs[key]), key


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_ids(KUSTOMIZATIONS))
def test_every_built_object_is_valid_and_namespaced(kubernetes_validate, directory: Path) -> None:
    for (kind, namespace, name), obj in index(build(directory)).items():
        if obj["apiVersion"] != CRD_GROUP:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if kind != "Namespace":
            assert namespace == NAMESPACE, (kind, name)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mllm-calib"


def test_the_plain_and_base_builds_are_the_same() -> None:
    assert index(build(K8S_DIR)) == index(build(K8S_DIR / "base"))


def test_the_monitoring_build_is_the_base_plus_the_operator_objects() -> None:
    base = index(build(K8S_DIR / "base"))
    monitoring = index(build(K8S_DIR / "monitoring"))
    assert set(base) <= set(monitoring)
    added = {(kind, name) for kind, _, name in set(monitoring) - set(base)}
    assert added == {
        ("ServiceMonitor", "mllm-calib-gateway"),
        ("PrometheusRule", "mllm-calib-alerts"),
        ("ConfigMap", "mllm-calib-grafana-dashboards"),
    }


def test_the_built_gateway_image_is_the_pinned_one() -> None:
    objects = index(build(K8S_DIR))
    images = yaml.safe_load((K8S_DIR / "base" / "kustomization.yaml").read_text())["images"]
    (image,) = images
    expected = f"{image['newName']}:{image['newTag']}"
    for kind, name in (("Deployment", "mllm-calib-gateway"), ("CronJob", "mllm-calib-refit")):
        obj = objects[(kind, NAMESPACE, name)]
        spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
        (container,) = spec["template"]["spec"]["containers"]
        assert container["image"] == expected, kind


def _write_kustomization(directory: Path, body: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(body))
    return directory


def test_a_file_outside_the_root_is_refused(tmp_path: Path) -> None:
    """The load restrictor: why the overlay holds copies of the alerts and dashboards."""
    (tmp_path / "dashboard.json").write_text("{}")
    overlay = _write_kustomization(
        tmp_path / "overlay",
        {
            "configMapGenerator": [
                {
                    "name": "d",
                    "files": ["../dashboard.json"],
                    "options": {"disableNameSuffixHash": True},
                }
            ]
        },
    )
    with pytest.raises(KustomizeError, match="outside the kustomization root"):
        build(overlay)
    if shutil.which("kubectl"):
        result = _kubectl_kustomize(shutil.which("kubectl") or "", overlay)
        assert result.returncode != 0
        assert "security" in result.stderr or "not in or below" in result.stderr


def test_an_overlay_inside_its_base_is_refused(tmp_path: Path) -> None:
    """The layout deploy/k8s had before (the overlay a subfolder of the base): a cycle."""
    base = tmp_path / "base"
    (base).mkdir()
    (base / "cm.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    )
    _write_kustomization(base, {"resources": ["cm.yaml"]})
    overlay = _write_kustomization(base / "overlay", {"resources": ["../"]})
    with pytest.raises(KustomizeError, match="cycle"):
        build(overlay)
    if shutil.which("kubectl"):
        result = _kubectl_kustomize(shutil.which("kubectl") or "", overlay)
        assert result.returncode != 0
        assert "cycle" in result.stderr


def test_an_unknown_kustomization_feature_is_refused(tmp_path: Path) -> None:
    directory = _write_kustomization(tmp_path / "k", {"patches": [{"path": "p.yaml"}]})
    with pytest.raises(KustomizeError, match="not supported"):
        build(directory)
