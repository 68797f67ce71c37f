"""The Kubernetes monitoring overlay carries the same alerts and dashboards as compose.

kustomize reads no file outside a kustomization's folder, so deploy/k8s/monitoring holds copies
of deploy/prometheus/alerts.yml (as a PrometheusRule) and deploy/grafana/dashboards/*.json
(turned into a ConfigMap by its configMapGenerator). scripts/sync_k8s_monitoring.py writes them;
these tests fail when a copy is stale, and check what the Prometheus Operator and Grafana's
dashboard sidecar need.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.deploy.deploy_files import K8S_DIR
from tests.deploy.kustomize import build, index
from tests.deploy.paths import GRAFANA_DIR, PROMETHEUS_DIR, REPO

pytestmark = pytest.mark.deploy

OVERLAY = K8S_DIR / "monitoring"
SCRIPT = REPO / "scripts" / "sync_k8s_monitoring.py"
SOURCE_DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))


def _sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_k8s_monitoring", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _built() -> dict:
    return index(build(OVERLAY))


def test_the_copies_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"run `python {SCRIPT.relative_to(REPO)}`:\n{result.stderr}"


def test_the_prometheus_rule_holds_exactly_the_alert_rules() -> None:
    rule = yaml.safe_load((OVERLAY / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    # What the operator requires of each rule; the ServiceMonitor's selector label is shared.
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert item["expr"] and ("alert" in item or "record" in item)
    monitor = yaml.safe_load((OVERLAY / "servicemonitor.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == monitor["metadata"]["labels"]["release"]


def test_promtool_accepts_the_prometheus_rule_spec(promtool: str, tmp_path: Path) -> None:
    rule = yaml.safe_load((OVERLAY / "prometheusrule.yaml").read_text())
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [promtool, "check", "rules", "rules.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_copies_are_byte_identical() -> None:
    assert SOURCE_DASHBOARDS
    copies = sorted((OVERLAY / "dashboards").glob("*.json"))
    assert [p.name for p in copies] == [p.name for p in SOURCE_DASHBOARDS]
    for source, copy in zip(SOURCE_DASHBOARDS, copies, strict=True):
        assert copy.read_bytes() == source.read_bytes(), copy.name


def test_the_dashboards_config_map_is_what_grafanas_sidecar_loads() -> None:
    config_map = _built()[("ConfigMap", "mllm-calib", "mllm-calib-grafana-dashboards")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(config_map["data"]) == {p.name for p in SOURCE_DASHBOARDS}
    for source in SOURCE_DASHBOARDS:
        data = config_map["data"][source.name]
        assert data == source.read_text()
        assert json.loads(data)["uid"]  # a fixed uid: the sidecar replaces, never duplicates
    # kubectl apply stores the last applied object in an annotation (256 KiB) next to the data:
    assert sum(len(v.encode()) for v in config_map["data"].values()) < 256 * 1024 // 2
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["options"]["disableNameSuffixHash"] is True


def test_a_stale_copy_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous: an edited alert or dashboard makes the check fail until the script runs."""
    sync = _sync_module()
    prometheus, grafana, overlay = tmp_path / "prom", tmp_path / "dash", tmp_path / "overlay"
    prometheus.mkdir()
    shutil.copy2(PROMETHEUS_DIR / "alerts.yml", prometheus / "alerts.yml")
    shutil.copytree(GRAFANA_DIR / "dashboards", grafana)
    shutil.copytree(OVERLAY, overlay)
    monkeypatch.setattr(sync, "ALERTS", prometheus / "alerts.yml")
    monkeypatch.setattr(sync, "DASHBOARDS", grafana)
    monkeypatch.setattr(sync, "OVERLAY", overlay)
    monkeypatch.setattr(sync, "RULE", overlay / "prometheusrule.yaml")
    assert sync.stale_files() == []
    alerts = (prometheus / "alerts.yml").read_text()
    (prometheus / "alerts.yml").write_text(alerts.replace("> 0.1", "> 0.2", 1))
    dashboard = grafana / SOURCE_DASHBOARDS[0].name
    dashboard.write_text(dashboard.read_text().replace('"title"', '"title" ', 1))
    assert sync.stale_files() == sorted(
        [overlay / "prometheusrule.yaml", overlay / "dashboards" / dashboard.name]
    )
    monkeypatch.setattr(sys, "argv", ["sync"])
    assert sync.main() == 0  # writes the copies
    assert sync.stale_files() == []
    rule = yaml.safe_load((overlay / "prometheusrule.yaml").read_text())
    assert rule["spec"] == yaml.safe_load((prometheus / "alerts.yml").read_text())
