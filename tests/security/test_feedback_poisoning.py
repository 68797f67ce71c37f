"""Feedback poisoning: per-key rate limits, and refits that ignore labels of revoked keys."""

from __future__ import annotations

import time

import pytest

from service.rate_limit import TokenBuckets
from tests.conftest import start_gateway
from tests.security.conftest import ADMIN_KEY, SecureGateway, make_keys
from tests.upstream_double import JSONReply, chat_response

# Options A-D; the model answers B with these logprobs (confidence ~0.63).
STEPS = [(" B", -0.4, [(" B", -0.4), (" A", -1.6), (" C", -3.0), (" D", -4.2)])]


# ----------------------------------------------------------------------- rate limit


def test_token_bucket_grants_the_burst_then_the_rate():
    now = [0.0]
    buckets = TokenBuckets(rate_per_s=2.0, burst=4, clock=lambda: now[0])
    assert [buckets.take("k") for _ in range(4)] == [0.0] * 4
    assert buckets.take("k") == pytest.approx(0.5)  # one token back in 0.5 s
    assert buckets.take("other") == 0.0  # buckets are per key
    now[0] = 1.0  # two tokens refilled
    assert buckets.take("k", 2) == 0.0
    assert buckets.take("k", 3) == pytest.approx(1.5)  # nothing spent by a refusal
    now[0] = 100.0
    assert buckets.take("k", 4) == 0.0  # refills up to the burst only
    assert buckets.take("k") > 0


@pytest.fixture(scope="module")
def limited(upstream_double, tmp_path_factory):
    gw = start_gateway(
        upstream_double.base_url,
        tmp_path_factory.mktemp("limited") / "calib.db",
        admin_key=ADMIN_KEY,
        refit_enabled=False,
        feedback_rate_per_s=2.0,
        feedback_burst=5,
    )
    try:
        yield SecureGateway(gw, make_keys(gw.app.state.store))
    finally:
        gw.server.stop()


def test_a_client_key_over_its_feedback_rate_gets_429_with_retry_after(limited):
    unknown = [{"id": f"no-such-{i}", "correct": True} for i in range(3)]
    with limited.client(limited.keys.globex) as http:
        # Five items of burst: a batch of three and two singles pass the limiter (then 404).
        assert http.post("/v1/feedback", json=unknown).status_code == 404
        assert http.post("/v1/feedback", json=unknown[0]).status_code == 404
        assert http.post("/v1/feedback", json=unknown[1]).status_code == 404
        limited_response = http.post("/v1/feedback", json=unknown)
    assert limited_response.status_code == 429
    error = limited_response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited_response.headers["retry-after"]) <= 2
    # Another key of another tenant, and admins, are not held back by this key's bucket.
    with limited.client(limited.keys.acme) as other:
        assert other.post("/v1/feedback", json=unknown[0]).status_code == 404
    with limited.client(limited.keys.admin) as admin:
        for _ in range(10):
            assert admin.post("/v1/feedback", json=unknown).status_code == 404
    # The bucket refills at the configured rate.
    time.sleep(int(limited_response.headers["retry-after"]) + 0.1)
    with limited.client(limited.keys.globex) as http:
        assert http.post("/v1/feedback", json=unknown[:2]).status_code == 404


def test_a_batch_larger_than_the_burst_is_refused_outright(limited):
    batch = [{"id": f"no-such-{i}", "correct": True} for i in range(6)]
    with limited.client(limited.keys.acme2) as http:
        response = http.post("/v1/feedback", json=batch)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "batch_too_large"


def test_get_is_not_rate_limited(limited):
    with limited.client(limited.keys.acme2) as http:
        for _ in range(12):
            assert http.get("/v1/feedback/no-such-id").status_code == 404


# ----------------------------------------------------------------------- revoked keys


def _ask_many(secure: SecureGateway, key: str, double, n: int, task: str) -> list[str]:
    double.reply = lambda path, body: JSONReply(chat_response(STEPS, model=body["model"]))
    ids = []
    with secure.client(key) as http:
        for _ in range(n):
            response = http.post(
                "/v1/chat/completions",
                json={
                    "model": "mcq",
                    "messages": [{"role": "user", "content": "Pick A, B, C or D."}],
                    "calibration": {"task": task},
                },
            )
            assert response.status_code == 200, response.text
            ids.append(response.json()["calibration"]["id"])
    return ids


def _refit(secure: SecureGateway, task: str) -> dict:
    with secure.client(secure.keys.admin) as admin:
        response = admin.post("/v1/calibration/models/mcq/refit", params={"task": task})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_refit_ignores_labels_given_with_a_revoked_key(secure, double):
    store = secure.store
    honest_key, _ = store.create_key("honest", "client", tenant="acme")
    poison_key, _ = store.create_key("poisoner", "client", tenant="acme")
    task = "poisoning"
    honest = _ask_many(secure, honest_key, double, 30, task)
    poisoned = _ask_many(secure, poison_key, double, 30, task)
    with secure.client(honest_key) as http:  # B is right about 80 % of the time
        labels = [{"id": i, "label": "B" if n % 5 else "A"} for n, i in enumerate(honest)]
        assert http.post("/v1/feedback", json=labels).status_code == 200
    with secure.client(poison_key) as http:  # the poisoner says B is always wrong
        labels = [{"id": i, "label": "D"} for i in poisoned]
        assert http.post("/v1/feedback", json=labels).status_code == 200

    assert _refit(secure, task)["n_labels"] == 60
    store.revoke_key("poisoner")
    after = _refit(secure, task)
    assert after["n_labels"] == 30  # the revoked key's labels are out of the window
    # ... but still stored, for the audit (and a key can only be revoked, never reinstated).
    assert store.get_feedback(poisoned[0]).label == "D"
    assert store.count_labels("mcq", task) == 30
