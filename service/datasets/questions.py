"""Factual question sets (country -> capital) in three forms, reproducible by seed.

Forms:

- ``cloze``: free-form answer. Completion style is a few-shot prompt ending in
  ``"Q: What is the capital of X?\\nA:"``; the answer is the capital (aliases accepted).
- ``options``: four capitals as lettered choices A-D (distractors from the same continent when
  possible); the answer is the letter.
- ``idk``: the same multiple-choice format about an *invented* country, with a fifth choice
  "I don't know" (``idk_option``); the right behaviour is to abstain (``answerable`` is false).

Style ``completion`` (default) suits base models such as the embedded Gemma 3 270M; style ``chat``
gives ``messages`` with an instruction instead, for instruction-tuned models.
The schema is documented in docs/datasets.md.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from service.datasets.countries import FEW_SHOT_COUNTRIES, Country, countries, normalize
from service.datasets.fake_names import invented_countries

Form = Literal["cloze", "options", "idk"]
Style = Literal["completion", "chat"]
FORMS: tuple[Form, ...] = ("cloze", "options", "idk")
IDK_TEXT = "I don't know"
#: Countries ranked below this by population count as well known (the rest: obscure).
WELL_KNOWN_RANK = 60

_CLOZE_SHOTS = (
    "Q: What is the capital of Germany?\nA: Berlin\n"
    "Q: What is the capital of Japan?\nA: Tokyo\n"
    "Q: What is the capital of Italy?\nA: Rome\n"
)
_OPTIONS_SHOTS = (
    "Q: What is the capital of Germany?\nA. Munich\nB. Berlin\nC. Vienna\nD. Hamburg\nAnswer: B\n\n"
    "Q: What is the capital of Japan?\nA. Tokyo\nB. Osaka\nC. Seoul\nD. Kyoto\nAnswer: A\n\n"
    "Q: What is the capital of Canada?\nA. Toronto\nB. Vancouver\nC. Montreal\nD. Ottawa\n"
    "Answer: D\n\n"
)
#: The invented country of the IDK few-shot example (never generated as a question).
_IDK_SHOT_COUNTRY = "Brelmoria"
_IDK_SHOTS = (
    "Q: What is the capital of Germany?\nA. Munich\nB. Berlin\nC. Vienna\nD. Hamburg\n"
    f"E. {IDK_TEXT}\nAnswer: B\n\n"
    f"Q: What is the capital of {_IDK_SHOT_COUNTRY}?\nA. Lima\nB. Oslo\nC. Dakar\nD. Hanoi\n"
    f"E. {IDK_TEXT}\nAnswer: E\n\n"
    "Q: What is the capital of Japan?\nA. Tokyo\nB. Osaka\nC. Seoul\nD. Kyoto\n"
    f"E. {IDK_TEXT}\nAnswer: A\n\n"
)


@dataclass(frozen=True)
class Question:
    """One question; exactly one of `prompt` (completion) and `messages` (chat) is set."""

    id: str
    form: Form
    answer: str
    answerable: bool
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    options: list[str] | None = None
    choices: list[str] | None = None
    idk_option: str | None = None
    aliases: list[str] = field(default_factory=list)
    subject: str = ""
    tier: Literal["well-known", "obscure", "invented"] = "well-known"

    def to_json(self) -> dict[str, object]:
        """The JSONL record: unset optional fields are left out."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != []}

    @classmethod
    def from_json(cls, record: dict[str, object]) -> Question:
        return cls(**record)  # type: ignore[arg-type]

    @property
    def cloze_prompt(self) -> str:
        """The few-shot cloze prompt for this question's subject (any form).

        For scoring `choices` as answer strings with a base model: send
        ``cloze_prompt + " " + choice + "\\n"`` with ``echo=true, logprobs=0`` and sum the logprobs
        of the appended tokens; the softmax over choices is the option distribution.
        """
        return f"{_CLOZE_SHOTS}Q: What is the capital of {self.subject}?\nA:"

    def is_correct(self, text: str) -> bool:
        """Grade a model's answer text: option label for option forms, capital for cloze."""
        if self.options:
            return chosen_option(text, self.options) == self.answer
        first_line = normalize(text.strip().splitlines()[0] if text.strip() else "")
        targets = [normalize(a) for a in (self.answer, *self.aliases)]
        return any(first_line == t or first_line.startswith(t + " ") for t in targets)


def chosen_option(text: str, options: Sequence[str]) -> str | None:
    """The first option label in `text` (spaces, parentheses, dots and colons stripped)."""
    for word in text.split():
        label = word.strip(" ().:")
        if label in options:
            return label
        if label:
            return None
    return None


def build_question_set(
    seed: int = 0,
    n: int = 100,
    forms: Iterable[Form] = FORMS,
    style: Style = "completion",
) -> list[Question]:
    """`n` questions of each form in `forms`, the same for the same arguments."""
    questions: list[Question] = []
    for form in forms:
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
        rng = random.Random(f"{seed}:{form}")
        if form == "idk":
            questions += _idk_questions(rng, n, seed, style)
        else:
            subjects = rng.sample(_pool(), min(n, len(_pool())))
            make = _cloze_question if form == "cloze" else _options_question
            questions += [make(c, rng, style) for c in subjects]
    return questions


class JsonRecord(Protocol):
    """A question of any form: it knows its JSONL object."""

    def to_json(self) -> dict[str, Any]: ...


def write_jsonl(questions: Iterable[JsonRecord], path: Path) -> int:
    """Write one JSON object per line (stable key order); return how many were written."""
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for q in questions:
            fh.write(json.dumps(q.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines skipped)."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_jsonl(path: Path) -> list[Question]:
    return [Question.from_json(obj) for obj in read_json_lines(path)]


# -- builders -----------------------------------------------------------------------------------


def _pool() -> list[Country]:
    return [c for c in countries() if c.name not in FEW_SHOT_COUNTRIES]


def _tier(country: Country) -> Literal["well-known", "obscure"]:
    return "well-known" if country.rank < WELL_KNOWN_RANK else "obscure"


def _cloze_question(country: Country, rng: random.Random, style: Style) -> Question:
    question = f"What is the capital of {country.name}?"
    text: dict[str, object] = {"prompt": f"{_CLOZE_SHOTS}Q: {question}\nA:"}
    if style == "chat":
        text = {"messages": _chat(f"{question} Answer with the name of the city only.")}
    return Question(
        id=f"cloze-{country.iso}",
        form="cloze",
        answer=country.capital,
        answerable=True,
        aliases=list(country.aliases),
        subject=country.name,
        tier=_tier(country),
        **text,  # type: ignore[arg-type]
    )


def _options_question(country: Country, rng: random.Random, style: Style) -> Question:
    choices = [country.capital, *_distractors(country, rng, 3)]
    rng.shuffle(choices)
    labels = list(string.ascii_uppercase[: len(choices)])
    answer = labels[choices.index(country.capital)]
    return Question(
        id=f"options-{country.iso}",
        form="options",
        answer=answer,
        answerable=True,
        options=labels,
        choices=choices,
        subject=country.name,
        tier=_tier(country),
        **_mc_text(country.name, labels, choices, _OPTIONS_SHOTS, style),  # type: ignore[arg-type]
    )


def _idk_questions(rng: random.Random, n: int, seed: int, style: Style) -> list[Question]:
    names = [x for x in invented_countries(n + 1, seed) if x != _IDK_SHOT_COUNTRY][:n]
    out = []
    for name in names:
        choices = [c.capital for c in rng.sample(_pool(), 4)] + [IDK_TEXT]
        labels = list(string.ascii_uppercase[: len(choices)])
        out.append(
            Question(
                id=f"idk-{normalize(name).replace(' ', '-')}",
                form="idk",
                answer=labels[-1],
                answerable=False,
                options=labels,
                choices=choices,
                idk_option=labels[-1],
                subject=name,
                tier="invented",
                **_mc_text(name, labels, choices, _IDK_SHOTS, style),  # type: ignore[arg-type]
            )
        )
    return out


def _distractors(country: Country, rng: random.Random, k: int) -> list[str]:
    """`k` other capitals, from the same continent when there are enough."""
    others = [c for c in _pool() if c.capital != country.capital]
    near = [c for c in others if c.continent == country.continent]
    source = near if len(near) >= k else others
    return [c.capital for c in rng.sample(source, k)]


def _mc_text(
    subject: str, labels: list[str], choices: list[str], shots: str, style: Style
) -> dict[str, object]:
    lines = "\n".join(f"{label}. {choice}" for label, choice in zip(labels, choices, strict=True))
    question = f"Q: What is the capital of {subject}?\n{lines}\n"
    if style == "chat":
        return {"messages": _chat(f"{question}Answer with the letter of the correct choice only.")}
    return {"prompt": f"{shots}{question}Answer:"}


def _chat(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]
