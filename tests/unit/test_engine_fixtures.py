"""score_options / score_sequence on responses recorded from the real engine.

Recorded files live in ``tests/fixtures/engine/*.json`` (Gemma 3 270M behind vLLM's OpenAI
server). Any JSON layout is accepted: every object with a ``choices`` list is a response; when a
request with ``calibration.options`` sits next to it, those are the options, else A-D.
The checks are invariants, so they hold for whatever the model happened to say.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calibrators import normalize_token, score_options, score_sequence

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "engine"
DEFAULT_OPTIONS = ["A", "B", "C", "D"]


def _responses(node: Any, options: list[str]) -> Iterator[tuple[dict, list[str]]]:
    if isinstance(node, dict):
        request = node.get("request")
        if isinstance(request, dict):
            found = (request.get("calibration") or {}).get("options") or node.get("options")
            options = list(found) if found else options
        if isinstance(node.get("choices"), list):
            yield node, options
            return
        for value in node.values():
            yield from _responses(value, options)
    elif isinstance(node, list):
        for value in node:
            yield from _responses(value, options)


def _choices() -> list[Any]:
    params = []
    for path in sorted(FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []:
        data = json.loads(path.read_text())
        for r, (response, options) in enumerate(_responses(data, DEFAULT_OPTIONS)):
            for choice in response["choices"]:
                if choice.get("logprobs"):
                    params.append(pytest.param(choice, options, id=f"{path.stem}-{r}"))
    return params or [pytest.param(None, None, marks=pytest.mark.skip("no engine fixtures yet"))]


def _content(choice: dict) -> list[dict] | None:
    logprobs = choice["logprobs"]
    return logprobs.get("content") if isinstance(logprobs, dict) else None


def _generated_text(choice: dict) -> str:
    message = choice.get("message") or {}
    return message.get("content") or choice.get("text") or ""


@pytest.mark.parametrize(("choice", "options"), _choices())
def test_sequence_features_summarize_every_generated_token(choice: dict, options: list) -> None:
    seq = score_sequence(choice["logprobs"])
    content = _content(choice)
    lps = (
        [e["logprob"] for e in content]
        if content is not None
        else [lp for lp in choice["logprobs"]["token_logprobs"] if lp is not None]
    )
    assert seq.n_tokens == len(lps)
    if lps:
        assert seq.mean_logprob == pytest.approx(np.mean(lps))
        assert seq.min_logprob == pytest.approx(min(lps))
        assert 0.0 < seq.raw_confidence <= 1.0


@pytest.mark.parametrize(("choice", "options"), _choices())
def test_option_scores_are_consistent_with_the_generated_tokens(
    choice: dict, options: list
) -> None:
    score = score_options(choice["logprobs"], options)
    content = _content(choice)
    tokens = [e["token"] for e in content] if content is not None else choice["logprobs"]["tokens"]
    labels = {normalize_token(o) for o in options}
    if not score.found:
        assert not any(normalize_token(t) in labels for t in tokens)
        return
    # The answer position holds a token naming the answer, and no earlier token named an option.
    assert not any(normalize_token(t) in labels for t in tokens[: score.position])
    label = normalize_token(score.answer)
    assert label.startswith(normalize_token(tokens[score.position]))
    text = _generated_text(choice)
    if text:
        assert normalize_token(tokens[score.position]) in text
    probs = score.probs()
    assert probs.sum() == pytest.approx(1.0)
    assert score.raw_confidence == pytest.approx(probs[score.answer_index])
    # The sampled token is one of the answer's variants, so its mass is included.
    # The generated tokens from the answer on are one way of writing the answer.
    lps = (
        [e["logprob"] for e in content]
        if content is not None
        else list(choice["logprobs"]["token_logprobs"])
    )
    assert score.option_logprobs[score.answer_index] >= sum(lps[score.position :]) - 1e-9
    # Distinct real tokens are disjoint events: their masses cannot sum past 1.
    real = [lp for lp, cut in zip(score.option_logprobs, score.truncated, strict=True) if not cut]
    if len(labels) == len(options):
        assert sum(math.exp(lp) for lp in real) <= 1.0 + 1e-6


# --- Specific recorded responses (see tests/fixtures/engine/README.md) ------------------------


def _load(name: str) -> dict:
    path = FIXTURES / f"{name}.json"
    if not path.exists():
        pytest.skip(f"fixture {name} not recorded")
    return json.loads(path.read_text())["response"]["choices"][0]


def _oracle_option_logprobs(top: list[tuple[str, float]], options: list[str]) -> np.ndarray:
    """Log-sum-exp of the listed tokens whose text, stripped of ' ()\\n.:', is the label."""
    out = []
    for option in options:
        lps = [lp for token, lp in top if token.strip(" ()\n.:") == option]
        out.append(np.logaddexp.reduce(lps) if lps else min(lp for _, lp in top))
    return np.array(out)


@pytest.mark.parametrize(
    ("name", "options", "answer"),
    [
        ("chat_options", ["A", "B", "C", "D"], "A"),
        ("completion_options", ["A", "B", "C", "D"], "B"),
        ("completion_idk_options", ["A", "B", "C", "D", "E"], "B"),
    ],
)
def test_recorded_option_answers_match_an_independent_reading(
    name: str, options: list[str], answer: str
) -> None:
    choice = _load(name)
    logprobs = choice["logprobs"]
    if "content" in logprobs:
        step = logprobs["content"][0]
        top = [(t["token"], t["logprob"]) for t in step["top_logprobs"]]
    else:
        top = list(logprobs["top_logprobs"][0].items())
    score = score_options(logprobs, options)
    assert score.answer == answer
    assert score.position == 0
    expected = _oracle_option_logprobs(top, options)
    np.testing.assert_allclose(score.option_logprobs, expected, rtol=1e-12)
    probs = np.exp(expected) / np.exp(expected).sum()
    assert score.raw_confidence == pytest.approx(probs[options.index(answer)])


def test_cyrillic_look_alikes_are_not_latin_option_letters() -> None:
    # Gemma lists Cyrillic U+0410 and U+0412 next to "A" and "B" at the answer position.
    choice = _load("chat_options")
    tokens = [t["token"] for t in choice["logprobs"]["content"][0]["top_logprobs"]]
    assert "\u0410" in tokens
    score = score_options(choice["logprobs"], ["A", "B", "C", "D"])
    a_entries = [
        t["logprob"] for t in choice["logprobs"]["content"][0]["top_logprobs"] if t["token"] == "A"
    ]
    assert score.option_logprobs[0] == pytest.approx(a_entries[0])


def test_recorded_zero_shot_answer_without_an_option_label_has_no_answer() -> None:
    score = score_options(_load("chat_options_zero_shot")["logprobs"], ["A", "B", "C", "D"])
    assert score.answer is None


def test_recorded_free_form_city_scores_as_an_arbitrary_string_option() -> None:
    choice = _load("completion_freeform_right")
    score = score_options(choice["logprobs"], [" Paris", " London", " Geneva", " Oslo"])
    top = choice["logprobs"]["top_logprobs"][0]
    assert score.answer == " Paris"
    assert score.option_logprobs[:3] == pytest.approx(
        (top[" Paris"], top[" London"], top[" Geneva"])
    )
    assert score.truncated == (False, False, False, True)
    assert score.option_logprobs[3] == pytest.approx(min(top.values()))


def test_recorded_multi_token_answer_is_the_sum_along_its_tokens() -> None:
    choice = _load("completion_freeform_wrong")
    score = score_options(choice["logprobs"], ["Asunción", "Buenos Aires", "Montevideo"])
    lps = choice["logprobs"]["token_logprobs"]
    tops = choice["logprobs"]["top_logprobs"]
    assert choice["logprobs"]["tokens"][:2] == [" Buenos", " Aires"]
    assert score.answer == "Buenos Aires"
    assert score.position == 0
    # The path " Buenos" " Aires", plus every other listed token that spells it on where the
    # path could have gone: " aires" (case folded) completes it, " A", " Aire" and "-" (read as
    # a space) start the rest.
    others = [tops[1][t] for t in (" aires", " A", " Aire", "-")]
    expected = np.logaddexp.reduce([lps[0] + lps[1], *(lps[0] + lp for lp in others)])
    assert score.option_logprobs[1] == pytest.approx(expected)
    assert score.option_logprobs[2] == pytest.approx(tops[0][" Montevideo"])
    # " A" is the only listed token that can start "Asunción": its own token where it departs.
    assert score.option_logprobs[0] == pytest.approx(tops[0][" A"])
    assert score.truncated == (False, False, False)


def test_recorded_right_free_form_answer_is_more_confident_than_the_wrong_one() -> None:
    right = score_sequence(_load("completion_freeform_right")["logprobs"])
    wrong = score_sequence(_load("completion_freeform_wrong")["logprobs"])
    assert right.raw_confidence > wrong.raw_confidence
    lps = _load("completion_freeform_right")["logprobs"]["token_logprobs"]
    assert right.raw_confidence == pytest.approx(math.exp(sum(lps) / len(lps)))


# --- String options (string_options.json: traps, shared prefixes, multi-token, accents) ------


def _string_cases() -> list[Any]:
    path = FIXTURES / "string_options.json"
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip("string options not recorded"))]
    return [pytest.param(c, id=c["name"]) for c in json.loads(path.read_text())["cases"]]


def _likelihoods(case: dict) -> list[float]:
    """Independent reading: the last prompt tokens, decoded, spell " " + the option."""
    out = []
    for option, choice in zip(case["options"], case["likelihood_response"]["choices"], strict=True):
        entries = [next(iter(e.values())) for e in choice["prompt_logprobs"][1:]]
        text, total = "", 0.0
        for entry in reversed(entries):
            text = entry["decoded_token"] + text
            total += entry["logprob"]
            if text == " " + option:
                break
        assert text == " " + option
        out.append(total)
    return out


@pytest.mark.parametrize("case", _string_cases())
def test_recorded_string_answers_name_the_expected_option(case: dict) -> None:
    choice = case["response"]["choices"][0]
    score = score_options(choice["logprobs"], case["options"])
    assert score.answer == case["expect"]
    if case["expect"] is None:
        assert score.option_logprobs == ()
        return
    assert score.probs().sum() == pytest.approx(1.0)
    assert score.raw_confidence == pytest.approx(score.probs()[score.answer_index])


@pytest.mark.parametrize(
    "case", [c for c in _string_cases() if c.values and c.values[0] and "likelihood_response"
             in c.values[0]]
)  # fmt: skip
def test_recorded_likelihoods_are_read_from_the_prompt_logprobs(case: dict) -> None:
    from service.proxy import sum_option_logprobs

    choices = case["likelihood_response"]["choices"]
    ours = [
        sum_option_logprobs(c["prompt_logprobs"], o)
        for c, o in zip(choices, case["options"], strict=True)
    ]
    assert ours == pytest.approx(_likelihoods(case))
    score = score_options(case["response"]["choices"][0]["logprobs"], case["options"],
                          likelihoods=ours)  # fmt: skip
    assert score.scoring == "likelihood"
    assert score.answer == case["expect"]
    assert score.probs().sum() == pytest.approx(1.0)
    path = score_options(case["response"]["choices"][0]["logprobs"], case["options"])
    # On these the two scorings agree on the likeliest option.
    assert int(np.argmax(score.probs())) == int(np.argmax(path.probs()))


def test_recorded_shared_prefix_is_read_where_the_options_depart() -> None:
    case = next(c.values[0] for c in _string_cases() if c.id == "new_york_shared")
    logprobs = case["response"]["choices"][0]["logprobs"]
    assert logprobs["tokens"][:2] == [" New", " York"]
    score = score_options(logprobs, case["options"])
    lps, tops = logprobs["token_logprobs"], logprobs["top_logprobs"]
    # Every listed token at the second position spells one or more of the options on ("York"
    # does not: "NewYork"). "-" reads as a space, so it starts all three and is split three ways.
    t1 = tops[1]
    dash = lps[0] + t1["-"] - np.log(3)
    new_york = [lps[0] + lps[1], *(lps[0] + t1[t] for t in (" york", " Y", " Yor")), dash]
    assert score.option_logprobs[0] == pytest.approx(np.logaddexp.reduce(new_york))
    new_orleans = [*(lps[0] + t1[t] for t in (" Orleans", " Or", " or")), dash]
    assert score.option_logprobs[2] == pytest.approx(np.logaddexp.reduce(new_orleans))
    # " Delhi" and its starts are not listed: only the shared "-".
    assert score.option_logprobs[1] == pytest.approx(dash)
    assert score.truncated == (True, True, True)
