"""The guarantee monitor through the real gateway and its /metrics: labels that arrive after an
activation either keep the threshold's risk and the sets' coverage (not broken) or break them
(broken = 1), and the exported p-values are scipy's one-sided binomial test of exactly the
labels the test posted."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binomtest

from service.guarantee_monitor import (
    ALPHA,
    binomial_p_value,
    selective_risk_state,
    set_coverage_state,
)
from tests.conftest import Gateway
from tests.refit.helpers import OPTIONS, OptionItem, option_items, refit_client, start_refit_gateway
from tests.refit.sets_helpers import T_TRUE, ask, train
from tests.upstream_double import UpstreamDouble

# The double's model is right about 60 % of the time: a 30 % selective risk is certifiable on a
# few hundred held-out labels at a threshold that still answers many questions.
TARGET_RISK = 0.3


@pytest.fixture(scope="module")
def monitor_gateway(upstream_double: UpstreamDouble, tmp_path_factory) -> Iterator[Gateway]:
    gw = start_refit_gateway(
        upstream_double.base_url, tmp_path_factory, "monitor", refit_target_risk=TARGET_RISK
    )
    yield gw
    gw.server.stop()


@pytest.fixture
def api(monitor_gateway: Gateway, double: UpstreamDouble) -> Iterator[httpx.Client]:
    monitor_gateway.app.state.metrics_cache_seconds = 0.0
    with refit_client(monitor_gateway) as client:
        yield client


def _post_labels(api, cals: list[dict], truths: list[int]) -> None:
    batch = [{"id": c["id"], "label": OPTIONS[t]} for c, t in zip(cals, truths, strict=True)]
    for start in range(0, len(batch), 500):
        response = api.post("/v1/feedback", json=batch[start : start + 500])
        assert response.status_code == 200, response.text


def _gauges(api, task: str) -> dict[tuple[str, str], float]:
    """{(metric, kind or ""): value} of the guarantee gauges of (mcq, task)."""
    response = api.get("/metrics")
    assert response.status_code == 200
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = sample.labels
            ours = labels.get("model") == "mcq" and labels.get("task") == task
            if ours and sample.name.startswith(("calib_realized", "calib_guarantee")):
                out[(sample.name, labels.get("kind", ""))] = sample.value
    return out


def _expected(cals: list[dict], truths: list[int], target_risk: float) -> dict[str, float]:
    """What the gauges must say, computed from the responses and the posted labels."""
    threshold = cals[0]["threshold"]
    answered = [c["answer"] == OPTIONS[t] for c, t in zip(cals, truths, strict=True)
                if c["confidence"] >= threshold]  # fmt: skip
    errors = answered.count(False)
    misses = sum(OPTIONS[t] not in c["prediction_set"] for c, t in zip(cals, truths, strict=True))
    coverage = sum(c["set_coverage"] for c in cals) / len(cals)
    return {
        "answered": len(answered),
        "errors": errors,
        "risk_p": binomtest(errors, len(answered), target_risk, alternative="greater").pvalue,
        "misses": misses,
        "set_p": binomtest(misses, len(cals), 1 - coverage, alternative="greater").pvalue,
        "coverage": coverage,
    }


def _fresh(api, double, task: str, n: int, seed: int) -> tuple[list[OptionItem], list[dict]]:
    items = option_items(n, T_TRUE, seed=seed)
    return items, ask(api, double, items, "mcq", task)


def _check(gauges: dict, expected: dict, n: int) -> None:
    assert gauges[("calib_realized_guarantee_labels", "selective_risk")] == expected["answered"]
    assert gauges[("calib_realized_selective_risk", "")] == pytest.approx(
        expected["errors"] / expected["answered"]
    )
    assert gauges[("calib_realized_coverage", "")] == pytest.approx(expected["answered"] / n)
    assert gauges[("calib_guarantee_target", "selective_risk")] == pytest.approx(TARGET_RISK)
    assert gauges[("calib_guarantee_p_value", "selective_risk")] == pytest.approx(
        expected["risk_p"], rel=1e-9
    )
    assert gauges[("calib_realized_guarantee_labels", "set_coverage")] == n
    assert gauges[("calib_realized_set_coverage", "")] == pytest.approx(1 - expected["misses"] / n)
    assert gauges[("calib_guarantee_target", "set_coverage")] == pytest.approx(expected["coverage"])
    assert gauges[("calib_guarantee_p_value", "set_coverage")] == pytest.approx(
        expected["set_p"], rel=1e-9
    )


def test_a_guarantee_that_holds_is_not_broken(api, double) -> None:
    outcome = train(api, double, "mcq", "mon-ok", 1200, seed=501)
    assert outcome["metrics"]["selective_risk"] is not None
    # Before any label after the activation: nothing to judge (the training labels predate it).
    assert _gauges(api, "mon-ok").get(("calib_guarantee_broken", "selective_risk")) is None

    items, cals = _fresh(api, double, "mon-ok", 800, seed=502)
    assert cals[0]["threshold"] < 1.0  # a certified threshold that answers something
    truths = [item.truth for item in items]  # drawn from the known distribution
    _post_labels(api, cals, truths)
    expected = _expected(cals, truths, TARGET_RISK)
    gauges = _gauges(api, "mon-ok")
    _check(gauges, expected, len(items))
    assert expected["answered"] >= 20
    assert gauges[("calib_guarantee_broken", "selective_risk")] == 0
    assert gauges[("calib_guarantee_broken", "set_coverage")] == 0
    assert expected["risk_p"] >= ALPHA and expected["set_p"] >= ALPHA


def test_labels_that_break_the_guarantees_set_broken(api, double) -> None:
    train(api, double, "mcq", "mon-bad", 1200, seed=503)
    items, cals = _fresh(api, double, "mon-bad", 300, seed=504)
    # The world turned: the truth is now always the option the model finds least likely.
    truths = [min(range(len(OPTIONS)), key=lambda i, it=item: it.logprobs[i]) for item in items]
    _post_labels(api, cals, truths)
    expected = _expected(cals, truths, TARGET_RISK)
    gauges = _gauges(api, "mon-bad")
    _check(gauges, expected, len(items))
    assert gauges[("calib_guarantee_broken", "selective_risk")] == 1
    assert gauges[("calib_guarantee_broken", "set_coverage")] == 1
    assert gauges[("calib_realized_selective_risk", "")] == 1.0


# ------------------------------------------------------------------ the pure parts


def test_binomial_p_value_is_the_upper_tail() -> None:
    assert binomial_p_value(0, 0, 0.1) == 1.0
    for failures, n, rate in ((5, 20, 0.1), (30, 100, 0.1), (0, 50, 0.05), (12, 12, 0.5)):
        expected = binomtest(failures, n, rate, alternative="greater").pvalue
        assert binomial_p_value(failures, n, rate) == pytest.approx(expected, rel=1e-12)
    # A tail by hand: P(Bin(3, 0.5) >= 2) = 4 / 8.
    assert binomial_p_value(2, 3, 0.5) == pytest.approx(0.5)


def test_an_uncertified_threshold_reports_its_risk_but_no_test() -> None:
    state = selective_risk_state(
        "m", "t", [0.9, 0.4, None, 0.7], [False, True, True, True], 0.5, 0.1, certified=False
    )
    assert state.realized == pytest.approx(0.5) and state.labels == 2
    assert state.realized_coverage == pytest.approx(2 / 3)
    assert state.p_value is None and state.broken is None


def test_sets_with_unknown_truth_count_only_when_decided() -> None:
    options = ["A", "B", "C", "D"]

    def row(indices, correct, true_index, answer_index=0):
        features = {"set_indices": indices, "set_coverage": 0.9, "options": options}
        features["answer_index"] = answer_index
        return features, correct, true_index

    rows = [
        row([0, 1], True, 0),  # covered (label known)
        row([0, 1], False, 2),  # missed (label known)
        row([0], False, None),  # only the wrong answer: missed
        row([0, 1, 2, 3], False, None),  # every option: covered
        row([0, 1], False, None),  # undecidable: left out
        ({"option_logprobs": [-1.0]}, True, 0),  # no set recorded: left out
    ]
    state = set_coverage_state("m", "t", rows)
    assert state is not None
    assert (state.labels, state.failures) == (4, 2)
    assert state.realized == pytest.approx(0.5) and state.target == pytest.approx(0.9)
    assert state.p_value == pytest.approx(binomtest(2, 4, 0.1, alternative="greater").pvalue)
    assert set_coverage_state("m", "t", rows[-1:]) is None
