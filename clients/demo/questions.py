"""The demo's two calibration tasks, built from the real-data question set.

- ``mcq``: the capital among four choices plus "I don't know". The base model gets the free-form
  few-shot prompt (one shot answers "I don't know" about an invented country) and vLLM's
  structured outputs (``structured_outputs: {"choice": [...]}``, passed through the gateway
  untouched) restrict the answer to the choices. The gateway scores the choices at the answer
  position from the raw top-20 logprobs (options mode) and temperature-scales them. Invented
  countries (unanswerable) are mixed in: the right answer there is "I don't know", the IDK option.
- ``cloze``: the capital, free-form (sequence mode, Platt/isotonic on exp(mean logprob)).
- ``vision``: synthetic pictures (`service.datasets.vision`: colour, shape, count, position at
  four difficulty levels, some with nothing to see) asked of the tiny VLM (`tiny-vlm`) as chat
  messages with a PNG data URL; options A–E with E = "I don't know" (options mode).

Listing the choices in the prompt instead makes the 270M base model pick the first listed choice
most of the time (measured: 37 of 58), and lettered prompts are at chance (docs/datasets.md);
constrained free-form answers avoid that position bias (accuracy 0.72, AUROC 0.91 on 60 questions).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from service.datasets import build_question_set
from service.datasets.vision import build_vision_set

IDK_CHOICE = "I don't know"

_MCQ_SHOTS = (
    "Q: What is the capital of Germany?\nA: Berlin\n"
    f"Q: What is the capital of Brelmoria?\nA: {IDK_CHOICE}\n"
    "Q: What is the capital of Japan?\nA: Tokyo\n"
    "Q: What is the capital of Italy?\nA: Rome\n"
)


@dataclass(frozen=True)
class DemoItem:
    """One request the demo sends, with what it needs to grade and label the answer."""

    id: str
    task: str  # "mcq", "cloze" or "vision"
    prompt: str  # completion prompt ("" for chat items)
    gold: str  # the right option string (mcq) or capital (cloze)
    answerable: bool
    options: list[str] | None = None
    idk_option: str | None = None
    aliases: tuple[str, ...] = ()
    subject: str = ""
    messages: list[dict[str, Any]] | None = None  # chat items (vision): sent as chat messages
    modality: str = "text"

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def extra_body(self) -> dict[str, object]:
        """Request fields the gateway passes through: mcq answers are restricted to the choices."""
        if not self.options or self.task == "vision":
            return {}
        return {"structured_outputs": {"choice": [f" {option}" for option in self.options]}}

    def is_correct(self, text: str, answer_option: str | None) -> bool:
        """mcq: the option the gateway read from the answer; cloze: the normalized first line."""
        if self.task in ("mcq", "vision"):
            return answer_option == self.gold
        from service.datasets.countries import normalize

        lines = text.strip().splitlines()
        first = normalize(lines[0] if lines else "")
        return any(
            first == normalize(t) or first.startswith(normalize(t) + " ")
            for t in (self.gold, *self.aliases)
        )


def demo_items(seed: int, n: int) -> list[DemoItem]:
    """`n` mcq questions about real countries, n/3 about invented ones, and `n` cloze questions."""
    questions = build_question_set(seed=seed, n=n, forms=("options", "cloze"))
    questions += build_question_set(seed=seed, n=max(1, n // 3), forms=("idk",))
    items: list[DemoItem] = []
    for q in questions:
        if q.form == "cloze":
            items.append(
                DemoItem(
                    id=q.id,
                    task="cloze",
                    prompt=q.cloze_prompt,
                    gold=q.answer,
                    answerable=True,
                    aliases=tuple(q.aliases),
                    subject=q.subject,
                )
            )
            continue
        options, listed = q.options or [], q.choices or []
        choices = [c for c in listed if c != IDK_CHOICE] + [IDK_CHOICE]
        gold = IDK_CHOICE if not q.answerable else listed[options.index(q.answer)]
        prompt = _MCQ_SHOTS + f"Q: What is the capital of {q.subject}?\nA:"
        items.append(
            DemoItem(
                id=q.id,
                task="mcq",
                prompt=prompt,
                gold=gold,
                answerable=q.answerable,
                options=choices,
                idk_option=IDK_CHOICE,
                subject=q.subject,
            )
        )
    random.Random(seed).shuffle(items)
    return items


def vision_items(seed: int, n: int) -> list[DemoItem]:
    """`n` image questions (a quarter per family, difficulties mixed) for the tiny VLM."""
    questions = build_vision_set(seed=seed + 7000, n=max(1, n // 4))
    items = [
        DemoItem(
            id=q.id,
            task="vision",
            prompt="",
            gold=q.answer,
            answerable=q.answerable,
            options=list(q.options),
            idk_option=q.idk_option,
            subject=f"{q.family}/d{q.difficulty}/{q.subject}",
            messages=q.messages,
            modality="image",
        )
        for q in questions
    ]
    random.Random(seed).shuffle(items)
    return items


def split(items: list[DemoItem], train_fraction: float) -> tuple[list[DemoItem], list[DemoItem]]:
    """Train (labels posted, refit) and held-out (answered after the refit) parts, per task."""
    train: list[DemoItem] = []
    test: list[DemoItem] = []
    for task in ("mcq", "cloze", "vision"):
        of_task = [item for item in items if item.task == task]
        cut = int(len(of_task) * train_fraction)
        train += of_task[:cut]
        test += of_task[cut:]
    return train, test
