"""The Grafana provisioning files and the calibration dashboard are well-formed."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.deploy.paths import DASHBOARD, GRAFANA_DIR

pytestmark = pytest.mark.deploy


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_datasource_is_the_compose_prometheus() -> None:
    doc = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert doc["apiVersion"] == 1
    (source,) = doc["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True


def test_dashboard_provider_loads_the_dashboards_folder() -> None:
    doc = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_header(dashboard: dict) -> None:
    assert dashboard["uid"] == "mllm-calib"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"]


def test_dashboard_has_a_templated_model_variable(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    model = variables["model"]
    assert model["type"] == "query" and model["multi"] and model["includeAll"]
    assert "label_values(" in model["definition"]


def test_every_panel_is_placed_and_queries_through_the_datasource_variable(dashboard: dict) -> None:
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_do_not_overlap(dashboard: dict) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine


def test_model_variable_filters_every_per_model_query(dashboard: dict) -> None:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if "calib_prediction" in expr:  # write-behind counters have no model label
                continue
            assert 'model=~"$model"' in expr, (panel["title"], expr)


def test_confidence_histogram_is_a_heatmap_of_buckets(dashboard: dict) -> None:
    heatmaps = [p for p in dashboard["panels"] if p["type"] == "heatmap"]
    assert heatmaps
    for panel in heatmaps:
        (target,) = panel["targets"]
        assert "calib_confidence_bucket" in target["expr"]
        assert target["format"] == "heatmap"
        assert "sum by (le)" in target["expr"]
