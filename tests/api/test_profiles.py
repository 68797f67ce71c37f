"""Responses calibrated with a stored, active profile (as a refit would leave it)."""

from __future__ import annotations

import numpy as np
import pytest

from calibrators import Profile
from tests.upstream_double import JSONReply, chat_response

STEPS = [(" B", -0.40, [(" B", -0.40), (" A", -1.60), (" C", -3.00), (" D", -4.20)])]
LOGITS = {"A": -1.60, "B": -0.40, "C": -3.00, "D": -4.20}


def save(gateway, **fields):
    profile = Profile(**fields)
    return gateway.app.state.store.save_profile(profile, activate=True, reason="test")


def softmax(values, temperature=1.0):
    v = np.array(values) / temperature
    e = np.exp(v - v.max())
    return e / e.sum()


def test_temperature_profile_is_applied_exactly(client, double, gateway):
    saved = save(
        gateway,
        model="mcq",
        task="temp-test",
        mode="options",
        method="temperature",
        calibrator={"type": "temperature", "temperature": 2.5},
        threshold=0.4,
    )
    double.reply = JSONReply(chat_response(STEPS))
    body = client.post(
        "/v1/chat/completions",
        json={
            "model": "mcq",
            "messages": [{"role": "user", "content": "?"}],
            "calibration": {"task": "temp-test"},
        },
    ).json()
    cal = body["calibration"]
    probs = softmax(list(LOGITS.values()), 2.5)
    raw = softmax(list(LOGITS.values()))
    assert cal["method"] == "temperature"
    assert cal["temperature"] == 2.5
    assert cal["profile_version"] == saved.version >= 1
    assert cal["confidence"] == pytest.approx(probs[1], abs=1e-12)
    assert cal["raw_confidence"] == pytest.approx(raw[1], abs=1e-12)
    assert cal["option_probs"] == pytest.approx(dict(zip(LOGITS, probs.tolist(), strict=True)))
    # Calibrated confidence (~0.46) is above the profile's threshold of 0.4 ...
    assert cal["threshold"] == 0.4 and cal["abstained"] is False
    # ... and a request threshold overrides it.
    double.reply = JSONReply(chat_response(STEPS))
    cal = client.post(
        "/v1/chat/completions",
        json={
            "model": "mcq",
            "messages": [{"role": "user", "content": "?"}],
            "calibration": {"task": "temp-test", "threshold": 0.9},
        },
    ).json()["calibration"]
    assert cal["abstained"] is True and cal["threshold"] == 0.9


def test_profile_system_prompt_wins_over_the_config(client, double, gateway):
    save(gateway, model="sp-prepend", task="sp-test", system_prompt="From the profile.")
    client.post(
        "/v1/chat/completions",
        json={
            "model": "sp-prepend",
            "messages": [{"role": "user", "content": "?"}],
            "calibration": {"task": "sp-test"},
        },
    )
    assert double.last.json["messages"][0] == {"role": "system", "content": "From the profile."}


def test_profile_of_the_other_mode_is_not_misapplied(client, double, gateway):
    save(
        gateway,
        model="mcq",
        task="mode-test",
        mode="options",
        method="temperature",
        calibrator={"type": "temperature", "temperature": 3.0},
    )
    double.reply = JSONReply(chat_response(STEPS))
    cal = client.post(
        "/v1/chat/completions",
        json={
            "model": "mcq",
            "messages": [{"role": "user", "content": "?"}],
            "calibration": {"task": "mode-test", "mode": "sequence"},
        },
    ).json()["calibration"]
    assert cal["mode"] == "sequence"
    assert cal["method"] == "none"
    assert cal["confidence"] == pytest.approx(np.exp(-0.40))
