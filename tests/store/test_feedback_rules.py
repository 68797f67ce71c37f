"""The pure rules that turn a label into correctness (service.feedback_rules)."""

from __future__ import annotations

import pytest

from service.feedback_rules import (
    LabelError,
    find_option,
    judge,
    normalize_option,
    normalize_words,
    same_judgement,
)

OPTIONS = ["A", "B", "C", "D"]


def _options(answer: str | None, *, idk: str | None = None, abstained: bool = False, **kw):
    options = [*OPTIONS, idk] if idk else OPTIONS
    return judge(
        mode="options", options=options, idk_option=idk, answer=answer, abstained=abstained, **kw
    )


def _sequence(answer: str | None, label: str):
    return judge(
        mode="sequence", options=None, idk_option=None, answer=answer, abstained=False, label=label
    )


@pytest.mark.parametrize("text", ["B", " B", "(B)", "B.", "B:", "\u2581B", " (B). "])
def test_option_normalization_matches_the_scorer(text: str) -> None:
    assert normalize_option(text) == "B"


def test_option_lookup_prefers_exact_then_unique_casefold() -> None:
    assert find_option("b", OPTIONS) == 1
    assert find_option("yes", ["Yes", "No"]) == 0
    assert find_option("a", ["a", "A"]) == 0
    assert find_option("x", ["A", "B"]) is None


def test_label_equal_to_the_answer_is_correct() -> None:
    j = _options("B", label="(B)")
    assert (j.correct, j.label, j.true_index) == (True, "B", 1)


def test_label_different_from_the_answer_is_wrong_and_gives_the_true_index() -> None:
    j = _options("B", label="d")
    assert (j.correct, j.label, j.true_index) == (False, "D", 3)


def test_label_outside_the_options_is_an_error() -> None:
    with pytest.raises(LabelError):
        _options("B", label="E")


@pytest.mark.parametrize(
    ("answer", "abstained", "expected"),
    [("E", False, True), ("A", True, True), ("A", False, False), (None, True, True)],
)
def test_idk_label_is_correct_exactly_when_the_model_abstained(answer, abstained, expected):
    j = _options(answer, idk="E", abstained=abstained, label="E")
    assert (j.correct, j.true_index) == (expected, 4)


def test_a_real_answer_when_the_truth_is_known_ignores_abstention() -> None:
    # Abstained by threshold but the withheld answer was right: calibration needs "correct".
    assert _options("C", idk="E", abstained=True, label="C").correct is True


def test_correct_flag_is_taken_as_given() -> None:
    assert _options("B", correct=True).true_index == 1
    assert _options("B", correct=False).true_index is None


def test_wrong_answer_on_a_two_option_question_implies_the_other() -> None:
    j = judge(
        mode="options",
        options=["yes", "no"],
        idk_option=None,
        answer="no",
        abstained=False,
        correct=False,
    )
    assert j.true_index == 0


def test_exactly_one_of_correct_and_label() -> None:
    with pytest.raises(LabelError):
        _options("B")
    with pytest.raises(LabelError):
        _options("B", correct=True, label="B")


@pytest.mark.parametrize(
    ("answer", "label", "expected"),
    [
        ("Paris", "paris", True),
        ("Paris.", "PARIS", True),
        ("Paris, France", "paris", True),
        ("  paris  france ", "Paris France!", True),
        ("Parisian", "paris", False),
        ("London", "paris", False),
        (None, "paris", False),
        ("\uff30\uff41\uff52\uff49\uff53", "paris", True),  # full-width "Paris" (NFKC)
    ],
)
def test_sequence_answer_must_equal_or_begin_with_the_label(answer, label, expected) -> None:
    assert _sequence(answer, label).correct is expected


def test_sequence_label_without_words_is_an_error() -> None:
    with pytest.raises(LabelError):
        _sequence("Paris", "?!")


def test_words_ignore_case_punctuation_and_spacing() -> None:
    assert normalize_words("  Hello,\tWORLD!! ") == ("hello", "world")


def test_repeats_are_the_same_judgement_and_changes_are_not() -> None:
    first = _options("B", label="B")
    assert same_judgement("options", first, _options("B", label="(b)"))
    assert same_judgement("options", first, _options("B", correct=True))
    assert not same_judgement("options", first, _options("B", correct=False))
    assert not same_judgement("options", _options("B", label="C"), _options("B", label="D"))
