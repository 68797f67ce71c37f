"""Options traffic through a gateway for the prediction-set and guarantee-monitor tests: ask,
label from the known distribution, refit."""

from __future__ import annotations

from tests.refit.helpers import OPTIONS, option_items, queue_reply

T_TRUE = 2.0  # the truth is softmax(z / 2): the engine's log_softmax(z) is overconfident


def body_for(model: str, task: str, coverage: float | None = None) -> dict:
    calibration: dict = {"task": task}
    if coverage is not None:
        calibration["set_coverage"] = coverage
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Pick A, B, C or D."}],
        "calibration": calibration,
    }


def ask(api, double, items, model, task, coverage=None) -> list[dict]:
    double.reply = queue_reply(items)
    out = []
    for _ in items:
        response = api.post("/v1/chat/completions", json=body_for(model, task, coverage))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["calibration"] == body["calibration"]
        out.append(body["calibration"])
    return out


def train(api, double, model: str, task: str, n: int, seed: int) -> dict:
    items = option_items(n, T_TRUE, seed=seed)
    cals = ask(api, double, items, model, task)
    assert all("prediction_set" not in cal and "set_coverage" not in cal for cal in cals)
    batch = [
        {"id": cal["id"], "label": OPTIONS[item.truth]}
        for cal, item in zip(cals, items, strict=True)
    ]
    for start in range(0, len(batch), 500):
        response = api.post("/v1/feedback", json=batch[start : start + 500])
        assert response.status_code == 200, response.text
    response = api.post(f"/v1/calibration/models/{model}/refit", params={"task": task})
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["status"] == "activated", outcome
    return outcome
