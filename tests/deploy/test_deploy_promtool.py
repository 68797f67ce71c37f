"""The Prometheus config and alert rules are valid, and the rule unit tests pass (promtool)."""

from __future__ import annotations

import subprocess

import pytest

from tests.deploy.paths import PROMETHEUS_DIR

pytestmark = pytest.mark.deploy


def _promtool(promtool: str, *args: str) -> None:
    result = subprocess.run(
        [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid(promtool: str) -> None:
    _promtool(promtool, "check", "config", "prometheus.yml")


def test_alert_rules_are_valid(promtool: str) -> None:
    _promtool(promtool, "check", "rules", "alerts.yml")


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    _promtool(promtool, "test", "rules", "alerts_test.yml")


def test_rule_unit_tests_can_fail(promtool: str, tmp_path) -> None:
    """The unit tests are not vacuous: a wrong expectation makes promtool fail."""
    broken = (
        (PROMETHEUS_DIR / "alerts_test.yml")
        .read_text()
        .replace(
            'summary: "Calibrated ECE of qwen/vqa is 0.180"',
            'summary: "Calibrated ECE of qwen/vqa is 0.999"',
        )
    )
    assert "0.999" in broken
    (tmp_path / "alerts.yml").write_text((PROMETHEUS_DIR / "alerts.yml").read_text())
    (tmp_path / "alerts_test.yml").write_text(broken)
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "CalibrationECEHigh" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_annotations() -> None:
    import yaml

    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    tested_firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    tested_quiet = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    for alert in alerts:
        name = alert["alert"]
        assert name in tested_firing, f"{name} is never tested firing"
        assert name in tested_quiet, f"{name} is never tested not firing"
        assert {"summary", "description", "runbook"} <= set(alert["annotations"]), name
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
