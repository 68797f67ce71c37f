"""The question-set builder: real data, three forms, reproducible by seed; and the real engine
gives a spread of right and wrong answers on it, with confidence that tracks correctness."""

from __future__ import annotations

import math

import httpx
import pytest

from service.datasets import (
    IDK_TEXT,
    build_question_set,
    countries,
    invented_countries,
    normalize,
    read_jsonl,
    write_jsonl,
)
from tests.integration.conftest import ENGINE_TEST_TIMEOUT_S, RunningEngine


def test_same_seed_writes_identical_file(tmp_path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(build_question_set(seed=7, n=30), a)
    write_jsonl(build_question_set(seed=7, n=30), b)
    assert a.read_bytes() == b.read_bytes()


def test_different_seed_gives_different_questions() -> None:
    assert build_question_set(seed=1, n=30) != build_question_set(seed=2, n=30)


def test_jsonl_round_trips(tmp_path) -> None:
    questions = build_question_set(seed=3, n=10)
    path = tmp_path / "q.jsonl"
    assert write_jsonl(questions, path) == 30
    assert read_jsonl(path) == questions


def test_each_form_has_its_schema() -> None:
    by_form = {q.form: q for q in build_question_set(seed=0, n=5)}
    cloze, options, idk = by_form["cloze"], by_form["options"], by_form["idk"]
    assert cloze.prompt.endswith(f"Q: What is the capital of {cloze.subject}?\nA:")
    assert cloze.answerable and cloze.options is None
    assert options.options == ["A", "B", "C", "D"] and options.answer in options.options
    capital = next(c.capital for c in countries() if c.name == options.subject)
    assert options.choices[options.options.index(options.answer)] == capital
    assert idk.idk_option == idk.answer == "E" and not idk.answerable
    assert idk.choices[-1] == IDK_TEXT


def test_ids_are_unique() -> None:
    questions = build_question_set(seed=0, n=200)
    assert len({q.id for q in questions}) == len(questions)


def test_invented_countries_are_not_real() -> None:
    real = {normalize(c.name) for c in countries()}
    names = invented_countries(200, seed=0)
    assert len(set(names)) == 200
    assert not real & {normalize(n) for n in names}


def test_chat_style_gives_messages() -> None:
    q = build_question_set(seed=0, n=1, forms=["options"], style="chat")[0]
    assert q.prompt is None and q.messages[0]["role"] == "user"


def test_grading_accepts_aliases_and_first_line() -> None:
    q = next(q for q in build_question_set(seed=0, n=300, forms=["cloze"]) if q.aliases)
    assert q.is_correct(f" {q.aliases[0]}\nQ: next")
    assert q.is_correct(f" {q.answer}.")
    assert not q.is_correct(" Atlantis")


@pytest.mark.engine
@pytest.mark.timeout(ENGINE_TEST_TIMEOUT_S)
def test_cloze_on_the_engine_gives_a_spread_and_informative_confidence(
    engine: RunningEngine,
) -> None:
    questions = build_question_set(seed=0, n=40, forms=["cloze"])
    right, wrong = [], []
    with httpx.Client(timeout=120) as client:
        for q in questions:
            body = {"model": engine.model, "prompt": q.prompt, "max_tokens": 8,
                    "temperature": 0, "logprobs": 1, "stop": ["\n"]}  # fmt: skip
            choice = client.post(f"{engine.base_url}/completions", json=body).json()["choices"][0]
            first_token_p = math.exp(choice["logprobs"]["token_logprobs"][0])
            (right if q.is_correct(choice["text"]) else wrong).append(first_token_p)
    accuracy = len(right) / len(questions)
    assert 0.25 <= accuracy <= 0.9, f"accuracy {accuracy:.2f}: no useful spread"
    assert sum(right) / len(right) > sum(wrong) / len(wrong) + 0.1
