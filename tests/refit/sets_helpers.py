"""Options traffic through a gateway for the prediction-set and guarantee-monitor tests: ask,
label from the known distribution, refit."""

from __future__ import annotations

import itertools
from typing import Any

from tests.refit.helpers import OPTIONS, OptionItem, option_items
from tests.upstream_double import JSONReply, chat_response

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


_batches = itertools.count()


def numbered_reply(items: list[OptionItem], prefix: str):  # type: ignore[no-untyped-def]
    """Answer successive requests with successive items, under ids `<prefix>-<i>`: the refit
    splits fit/held-out by a hash of the id, so fixed ids make a run repeat exactly (the
    double's own ids carry a clock)."""
    pending = list(enumerate(items))

    def reply(path: str, body: dict[str, Any]) -> JSONReply:
        i, item = pending.pop(0)
        answer = chat_response(item.steps(), model=body.get("model", "m"))
        answer["id"] = f"{prefix}-{i}"
        return JSONReply(answer)

    return reply


def ask(api, double, items, model, task, coverage=None, *, ids: str | None = None) -> list[dict]:
    """One request per item; `ids` fixes the response ids (else a per-process counter)."""
    double.reply = numbered_reply(items, ids or f"{model}-{task}-{next(_batches)}")
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
    cals = ask(api, double, items, model, task, ids=f"{model}-{task}-train-{seed}")
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
