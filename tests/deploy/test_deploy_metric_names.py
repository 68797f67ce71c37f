"""Every metric name the dashboard and the alert rules use is one the service really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import yaml

from service.metrics import exported_series_names
from tests.deploy.paths import DASHBOARD, PROMETHEUS_DIR

pytestmark = pytest.mark.deploy

# A PromQL metric identifier starting with calib_ (recording-rule names may contain ':').
# It must not be preceded by a name character, so `xcalib_a` or a label `foo_calib_x` never match;
# names inside {__name__=~"a|b"} matchers are found too.
_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_:])calib_[A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The calib_* metric names a PromQL expression selects (comments ignored)."""
    without_comments = "\n".join(line.split("#", 1)[0] for line in expr.splitlines())
    return set(_IDENTIFIER.findall(without_comments))


def unknown_names(exprs: Iterable[str], exported: Iterable[str]) -> set[str]:
    """Names used in `exprs` that are not exported series names.

    Series names, not family names, are the reference: `calib_requests_total` and
    `calib_confidence_bucket` are valid, `calib_requests` (no `_total`) or `calib_ece_bucket`
    (a gauge has no buckets) are not.
    """
    known = set(exported)
    return {name for expr in exprs for name in metric_names(expr)} - known


def _dashboard_exprs(node: Any) -> Iterator[str]:
    """PromQL in a dashboard: panel targets' `expr`, variables' `definition` and `query.query`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict):
                yield str(value.get("query", ""))
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def dashboard_exprs() -> list[str]:
    return [e for e in _dashboard_exprs(json.loads(DASHBOARD.read_text())) if e]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return {
        rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule
    }


# --------------------------------------------------------------------------- the extractor


def test_extractor_finds_names_in_functions_matchers_and_name_regexes() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(calib_request_duration_seconds_bucket"
        '{model=~"$model"}[5m]))) / on() group_left {__name__=~"calib_requests_total|calib_ece"}'
        " # calib_in_a_comment"
    )
    assert metric_names(expr) == {
        "calib_request_duration_seconds_bucket",
        "calib_requests_total",
        "calib_ece",
    }


def test_extractor_ignores_label_names_and_other_prefixes() -> None:
    assert metric_names('sum by (model) (vllm:num_requests{job="x"}) + xcalib_a') == set()


@pytest.mark.parametrize(
    "bad",
    [
        "calib_nonexistent",
        "rate(calib_requests[5m])",  # counter without _total
        "calib_ece_bucket",  # a gauge has no buckets
        "calib_confidence",  # histogram selected without _bucket/_sum/_count
        "calib_refit_failures",  # family name, not the series name
    ],
)
def test_an_unknown_name_is_caught(bad: str) -> None:
    assert unknown_names([bad], exported_series_names())


def test_exported_names_cover_histogram_and_counter_series() -> None:
    exported = exported_series_names()
    assert {"calib_confidence_bucket", "calib_confidence_sum", "calib_confidence_count"} <= exported
    assert "calib_requests_total" in exported and "calib_requests" not in exported
    assert "calib_ece" in exported and "calib_ece_bucket" not in exported


# --------------------------------------------------------------------------- the real files


def test_dashboard_uses_only_exported_names() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    assert unknown_names(exprs, exported_series_names() | recorded_names()) == set()


def test_alert_rules_use_only_exported_names() -> None:
    exprs = rule_exprs()
    assert len(exprs) >= 6
    assert unknown_names(exprs, exported_series_names() | recorded_names()) == set()


def test_dashboard_shows_the_calibration_story() -> None:
    used = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    required = {
        "calib_ece",
        "calib_temperature",
        "calib_threshold",
        "calib_accuracy",
        "calib_estimated_accuracy",
        "calib_abstentions_total",
        "calib_coverage",
        "calib_confidence_bucket",
        "calib_feedback_total",
        "calib_confidence_drift_psi",
        "calib_last_refit_success_timestamp_seconds",
        "calib_refit_failures_total",
        "calib_refit_duration_seconds_bucket",
        "calib_request_duration_seconds_bucket",
        "calib_gateway_overhead_seconds_bucket",
        "calib_upstream_errors_total",
    }
    assert required <= used, sorted(required - used)
