"""`/metrics` cannot be poisoned with made-up model names.

A real gateway in front of its own upstream double (a loopback HTTP server that answers 404
for models it does not serve, like vLLM) with a short model-list refresh: made-up names count
as `_other` and add no series, the real model keeps its own, and a model the upstream starts
listing later gets its own label after a refresh; a failed refresh keeps the last list.

Metrics are per process and other tests' gateways share it, so the checks compare before/after.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.known_models import model_ids
from tests.conftest import Gateway, start_gateway
from tests.processes import wait_for
from tests.upstream_double import JSONReply, UpstreamDouble


@pytest.fixture
def own_double() -> Iterator[UpstreamDouble]:
    """An upstream of this test only: its `GET /v1/models` count is the refresh clock."""
    double = UpstreamDouble().start()
    double.models = ["test-model"]
    double.known_models = {"test-model", "mcq"}
    yield double
    double.stop()


@pytest.fixture
def gateway(own_double: UpstreamDouble, tmp_path) -> Iterator[Gateway]:
    gw = start_gateway(own_double.base_url, tmp_path / "calib.db", upstream_models_refresh_s=0.2)
    yield gw
    gw.server.stop()


def _listings(double: UpstreamDouble) -> int:
    return sum(1 for r in double.requests if r.method == "GET" and r.path == "/v1/models")


def _wait_for_refreshes(double: UpstreamDouble, count: int = 2) -> None:
    """Wait until the gateway asked for the model list `count` more times: the refresher is
    sequential, so once the second request arrives the first answer has been applied."""
    start = _listings(double)
    wait_for("the model list to be refreshed", lambda: _listings(double) >= start + count, 30)


def _scrape(client: httpx.Client) -> tuple[dict[str, float], int]:
    """Requests per `model` label value, and the number of `calib_*` series."""
    totals: dict[str, float] = {}
    series = 0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if not family.name.startswith("calib_"):
            continue
        series += len(family.samples)
        for sample in family.samples:
            if sample.name == "calib_requests_total":
                model = sample.labels["model"]
                totals[model] = totals.get(model, 0.0) + sample.value
    return totals, series


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    keys = set(before) | set(after)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in delta.items() if v}


def _ask(client: httpx.Client, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    return client.post("/v1/chat/completions", json=body).status_code


def test_made_up_models_count_as_other_and_never_displace_the_real_one(
    gateway: Gateway, own_double: UpstreamDouble
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        start, _ = _scrape(client)
        assert _ask(client, "made-up-0") == 404
        _, series_after_one = _scrape(client)
        for i in range(1, 150):
            assert _ask(client, f"made-up-{i}") == 404
        totals, series_after_all = _scrape(client)
        # 149 more made-up names: not one series more.
        assert series_after_all == series_after_one
        assert _ask(client, "test-model") == 200  # listed by the upstream
        assert _ask(client, "mcq") == 200  # configured
        totals, _ = _scrape(client)
        assert _delta(start, totals) == {"_other": 150.0, "test-model": 1.0, "mcq": 1.0}
        assert "made-up" not in client.get("/metrics").text


def test_a_model_listed_later_gets_its_own_label_after_a_refresh(
    gateway: Gateway, own_double: UpstreamDouble
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        own_double.known_models = {"test-model", "lora-new"}
        start, _ = _scrape(client)
        assert _ask(client, "lora-new") == 200  # served, but not listed yet
        middle, _ = _scrape(client)
        assert _delta(start, middle) == {"_other": 1.0}
        own_double.models = ["test-model", "lora-new"]
        _wait_for_refreshes(own_double)
        assert _ask(client, "lora-new") == 200
        end, _ = _scrape(client)
        assert _delta(middle, end) == {"lora-new": 1.0}


def test_a_failed_refresh_keeps_the_last_list(gateway: Gateway, own_double: UpstreamDouble) -> None:
    known = gateway.app.state.known_models
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        failures = known.failures
        own_double.models_reply = JSONReply({"error": {"message": "engine restarting"}}, 503)
        _wait_for_refreshes(own_double)
        assert known.failures >= failures + 1
        assert known.listed == frozenset({"test-model"})
        start, _ = _scrape(client)
        assert _ask(client, "test-model") == 200
        end, _ = _scrape(client)
        assert _delta(start, end) == {"test-model": 1.0}


def test_model_ids_read_an_openai_model_list_and_reject_anything_else() -> None:
    body = {"object": "list", "data": [{"id": "a"}, {"id": "b"}, {"id": 3}, "c", {"id": ""}]}
    assert model_ids(body) == frozenset({"a", "b"})
    assert model_ids({"data": []}) == frozenset()
    for bad in ({"models": ["a"]}, ["a"], None, {"data": "a"}):
        with pytest.raises(ValueError):
            model_ids(bad)
