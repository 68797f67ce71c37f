"""Labeled multiple-choice items a prompt-optimization job replays, and where they come from.

An item is one request the way a client sent it (a completion ``prompt`` or chat ``messages``,
*before* the gateway's injections), its ``options`` and the right one (``answer``). Sources:

* a JSONL file: the question-set schema of docs/datasets.md (`prompt`/`messages`, `options`,
  `answer`, optional `idk_option`, `id`) — items without `options` (cloze) are skipped;
  ``add_idk_option: true`` (+ ``idk_text``) on a line asks for the gateway's IDK choice;
* stored predictions with feedback (`--from-feedback`): needs `store_request_content` (only then
  is the request kept with the prediction) and a label that names an option (`label`, or
  `correct: true`, which makes the model's answer the right one).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.feedback_rules import find_option

__all__ = ["LabeledItem", "items_from_feedback", "read_items", "split_items"]


@dataclass(frozen=True)
class LabeledItem:
    """One replayable multiple-choice request and its right option."""

    id: str
    options: list[str]
    answer: str  # one of `options`
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    idk_option: str | None = None
    add_idk: bool = False  # the gateway adds the IDK choice (`idk_option` is then its label)
    idk_text: str | None = None
    answerable: bool = True
    #: Request fields the client sent besides the prompt (e.g. vLLM's `structured_outputs`),
    #: replayed as given: a prompt is judged under the decoding it will be served with.
    extra_body: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(f"item {self.id!r}: give exactly one of `prompt` and `messages`")
        if len(self.options) < 2 or self.answer not in self.options:
            raise ValueError(f"item {self.id!r}: `answer` must be one of at least two `options`")

    @property
    def chat(self) -> bool:
        return self.messages is not None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabeledItem:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def item_from_record(record: dict[str, Any], index: int) -> LabeledItem | None:
    """A JSONL record as an item; None for records without options (free-form questions)."""
    options = record.get("options")
    if not options:
        return None
    add_idk = bool(record.get("add_idk_option", False))
    idk = record.get("idk_option")
    options = [str(o) for o in options]
    if add_idk and idk is None:
        from service.proxy import choose_label

        idk_text = str(record.get("idk_text") or "I don't know")
        idk = choose_label(options, idk_text)
        options = [*options, idk]
    answerable = record.get("answerable")
    return LabeledItem(
        id=str(record.get("id", f"item-{index}")),
        options=options,
        answer=str(record["answer"]),
        prompt=record.get("prompt"),
        messages=record.get("messages"),
        idk_option=idk,
        add_idk=add_idk,
        idk_text=record.get("idk_text") or ("I don't know" if add_idk else None),
        answerable=bool(answerable) if answerable is not None else record.get("answer") != idk,
        extra_body=_extra_body(record.get("extra_body")),
    )


# The fields the replay itself sets: an item's `extra_body` cannot change what is measured.
_REPLAY_FIELDS = frozenset(
    {"model", "prompt", "messages", "logprobs", "top_logprobs", "max_tokens", "temperature"}
    | {"stream", "n", "calibration"}
)


def _extra_body(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("`extra_body` must be an object")
    clash = sorted(_REPLAY_FIELDS & set(value))
    if clash:
        raise ValueError(f"`extra_body` may not set {clash}")
    return dict(value)


def read_items(path: Path) -> list[LabeledItem]:
    """Items of a JSONL file (options questions only)."""
    items = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if line.strip():
                item = item_from_record(json.loads(line), i)
                if item is not None:
                    items.append(item)
    return items


def items_from_feedback(store: Any, model: str, task: str, limit: int = 5000) -> list[LabeledItem]:
    """Labeled options-mode predictions with stored request content (newest first)."""
    items = []
    for labeled in store.labeled_predictions(model, task, limit=limit):
        p = labeled.prediction
        content = p.request_content
        if p.mode != "options" or not p.options or not isinstance(content, dict):
            continue
        if labeled.true_index is not None and 0 <= labeled.true_index < len(p.options):
            answer = p.options[labeled.true_index]
        elif labeled.label is not None and find_option(labeled.label, p.options) is not None:
            answer = p.options[find_option(labeled.label, p.options)]  # type: ignore[index]
        else:
            continue  # a wrong answer without the right one: nothing to score against
        prompt, messages = content.get("prompt"), content.get("messages")
        if not isinstance(prompt, str) and not isinstance(messages, list):
            continue
        # The stored content is the client's; an IDK choice the gateway added is not in it.
        shown = json.dumps(content, ensure_ascii=False)
        add_idk = p.idk_option is not None and p.idk_option == p.options[-1]
        add_idk = add_idk and f"{p.idk_option}." not in shown and p.idk_option not in shown
        items.append(
            LabeledItem(
                id=p.id,
                options=list(p.options),
                answer=answer,
                prompt=prompt if isinstance(prompt, str) else None,
                messages=messages if not isinstance(prompt, str) else None,
                idk_option=p.idk_option,
                add_idk=add_idk,
                idk_text="I don't know" if add_idk else None,
                answerable=answer != p.idk_option,
            )
        )
    return items


def split_items(
    items: list[LabeledItem], holdout_fraction: float, seed: int = 0
) -> tuple[list[LabeledItem], list[LabeledItem]]:
    """(search, held-out): a seeded shuffle, stratified by answerable/unanswerable."""
    rng = random.Random(seed)
    search: list[LabeledItem] = []
    heldout: list[LabeledItem] = []
    for answerable in (True, False):
        group = [item for item in items if item.answerable is answerable]
        rng.shuffle(group)
        cut = round(len(group) * holdout_fraction)
        if group and holdout_fraction > 0 and cut == 0:
            cut = 1
        if len(group) > 1 and cut >= len(group):
            cut = len(group) - 1
        heldout += group[:cut]
        search += group[cut:]
    return search, heldout
