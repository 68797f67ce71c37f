"""The calibration loop the demo runs against a gateway: ask, label, refit, ask again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clients.sdk import AsyncCalibClient, CalibClient, Calibration

from .questions import DemoItem

MAX_TOKENS = {"mcq": 12, "cloze": 8, "vision": 1}


@dataclass(frozen=True)
class Answered:
    """One answered item: the text, the gateway's calibration object, and the verdict."""

    item: DemoItem
    text: str
    calibration: Calibration | None
    correct: bool

    @property
    def abstained(self) -> bool:
        return bool(self.calibration and self.calibration.abstained)


async def _ask_one(client: AsyncCalibClient, model: str, item: DemoItem) -> Answered:
    kwargs: dict[str, Any] = {
        "max_tokens": MAX_TOKENS[item.task],
        "temperature": 0.0,
        "stop": ["\n"],
        "task": item.task,
        **item.extra_body,
    }
    if item.options:
        kwargs.update(options=item.options, idk_option=item.idk_option, mode="options")
    else:
        kwargs["mode"] = "sequence"
    if item.messages is not None:
        result = await client.chat(model, item.messages, **kwargs)
    else:
        result = await client.complete(model, item.prompt, **kwargs)
    calibration = result.calibration
    answer = calibration.answer if calibration else None
    return Answered(item, result.text, calibration, item.is_correct(result.text, answer))


async def ask_all(
    gateway_url: str,
    model: str,
    items: list[DemoItem],
    *,
    concurrency: int = 8,
    api_key: str | None = None,
    on_done: Callable[[], None] = lambda: None,
) -> list[Answered]:
    """Send every item through the gateway, `concurrency` at a time, in the items' order."""
    gate = asyncio.Semaphore(concurrency)
    async with AsyncCalibClient(gateway_url, api_key, max_connections=concurrency) as client:

        async def one(item: DemoItem) -> Answered:
            async with gate:
                answered = await _ask_one(client, model, item)
            on_done()
            return answered

        return list(await asyncio.gather(*(one(item) for item in items)))


def feedback_for(answered: Answered) -> dict[str, Any] | None:
    """The feedback a user would post: the true option (mcq) or correctness (free-form)."""
    if answered.calibration is None or not answered.calibration.id:
        return None
    if answered.item.task in ("mcq", "vision"):
        return {"id": answered.calibration.id, "label": answered.item.gold}
    return {"id": answered.calibration.id, "correct": answered.correct}


def post_feedback(client: CalibClient, answered: list[Answered], batch: int = 200) -> int:
    """Post the gold labels in batches; returns how many were acknowledged."""
    items = [f for f in map(feedback_for, answered) if f is not None]
    for start in range(0, len(items), batch):
        client.feedback_many(items[start : start + batch])
    return len(items)
