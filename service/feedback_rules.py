"""How a posted label becomes a correctness judgement (pure: no I/O, no database).

Rules (documented for users in docs/store.md):

* ``{correct}`` is taken as given. The true option index is recorded when it follows: the
  answer's index when correct; the other option when wrong on a two-option question.
* Options mode, ``{label}``: the label must name one of the options (or the IDK option),
  compared after the same normalization the scorer applies to tokens
  (`calibrators.scoring.normalize_token`: strip whitespace and ``( ) . :`` from both ends),
  falling back to a case-insensitive match when that is unambiguous. ``correct = label == answer``.
* The IDK label means "this question cannot be answered": an abstention (``abstained`` or the
  answer being the IDK option) is correct, any other answer is wrong.
* Sequence mode, ``{label}``: words are compared case-, punctuation- and whitespace-insensitively
  (Unicode NFKC, casefolded, ``\\w+`` runs). Correct when the answer's words equal the label's
  words or begin with them ("Paris." and "Paris, France" match "paris"; "Parisian" does not).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from calibrators.scoring import normalize_token

_WORD = re.compile(r"\w+")


class LabelError(ValueError):
    """The label cannot be judged against this prediction (e.g. not one of its options)."""


@dataclass(frozen=True)
class Judgement:
    correct: bool
    label: str | None  # canonical form to store (the matching option for options mode)
    true_index: int | None  # index into the prediction's options, when known


def normalize_option(text: str) -> str:
    """An option label as the scorer sees it: `" (B)."` → `"B"`."""
    return normalize_token(unicodedata.normalize("NFKC", text))


def normalize_words(text: str) -> tuple[str, ...]:
    """Free text as a tuple of casefolded words, ignoring punctuation and whitespace."""
    return tuple(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def find_option(label: str, options: Sequence[str]) -> int | None:
    """Index of the option `label` names: exact after normalization, else unique casefold."""
    wanted = normalize_option(label)
    if not wanted:
        return None
    normalized = [normalize_option(option) for option in options]
    if wanted in normalized:
        return normalized.index(wanted)
    folded = [i for i, option in enumerate(normalized) if option.casefold() == wanted.casefold()]
    return folded[0] if len(folded) == 1 else None


def same_option(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    na, nb = normalize_option(a), normalize_option(b)
    return na == nb or na.casefold() == nb.casefold()


def judge(
    *,
    mode: str,
    options: Sequence[str] | None,
    idk_option: str | None,
    answer: str | None,
    abstained: bool,
    correct: bool | None = None,
    label: str | None = None,
) -> Judgement:
    """Decide correctness of one prediction from `correct` or `label` (exactly one is given)."""
    if (correct is None) == (label is None):
        raise LabelError("give exactly one of 'correct' and 'label'")
    if mode == "options":
        return _judge_options(options or [], idk_option, answer, abstained, correct, label)
    return _judge_sequence(answer, correct, label)


def same_judgement(mode: str, stored: Judgement, new: Judgement) -> bool:
    """Whether `new` says the same as `stored` (a repeat post), so it is not a conflict."""
    if stored.correct != new.correct:
        return False
    if new.label is None or stored.label is None:
        return True
    if mode == "options":
        return same_option(stored.label, new.label)
    return normalize_words(stored.label) == normalize_words(new.label)


def _answer_index(options: Sequence[str], answer: str | None) -> int | None:
    return None if answer is None else find_option(answer, options)


def _judge_options(
    options: Sequence[str],
    idk_option: str | None,
    answer: str | None,
    abstained: bool,
    correct: bool | None,
    label: str | None,
) -> Judgement:
    answer_index = _answer_index(options, answer)
    if correct is not None:
        true_index = None
        if correct:
            true_index = answer_index
        elif len(options) == 2 and answer_index is not None and not _is_idk(answer, idk_option):
            true_index = 1 - answer_index
        return Judgement(correct, None, true_index)

    assert label is not None
    if _is_idk(label, idk_option):
        assert idk_option is not None
        said_idk = abstained or _is_idk(answer, idk_option)
        return Judgement(said_idk, idk_option, find_option(idk_option, options))
    if options:
        index = find_option(label, options)
        if index is None:
            raise LabelError(f"label {label!r} is not one of the options {list(options)}")
        return Judgement(answer_index == index, options[index], index)
    if not normalize_option(label):
        raise LabelError("label is empty")
    return Judgement(same_option(answer, label), label.strip(), None)


def _is_idk(text: str | None, idk_option: str | None) -> bool:
    return idk_option is not None and same_option(text, idk_option)


def _judge_sequence(answer: str | None, correct: bool | None, label: str | None) -> Judgement:
    if correct is not None:
        return Judgement(correct, None, None)
    assert label is not None
    wanted = normalize_words(label)
    if not wanted:
        raise LabelError("label has no words to compare")
    got = normalize_words(answer or "")
    return Judgement(got[: len(wanted)] == wanted, label.strip(), None)
