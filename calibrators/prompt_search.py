"""Iterative (APE-style) search for the instruction that precedes the answer.

Chen et al. (COLING 2025) optimize the prompt with a loop in the spirit of APE: start from seed
prompts, ask an LLM for paraphrases of every kept prompt, evaluate every new candidate on a
labeled multiple-choice set (accuracy and 10-bin ECE of the answer confidence), keep the best
``k`` and repeat. This module is that loop and nothing else: the paraphraser and the evaluator
are callables, so the same code runs against a real engine (``service.prompt_opt``) and against
deterministic functions in unit tests.

Rules (exact):

* round 0 evaluates the seeds; rounds ``1..n`` ask ``paraphrase(prompt, m)`` for every kept
  prompt (in rank order) and evaluate the new candidates;
* ranking: accuracy bucket of width 0.2 first (higher is better; ``[0.8, 1.0]`` is the top
  bucket), then ECE (lower is better), then the order of evaluation (earlier wins);
* after each round the ``k`` best of (kept ∪ new) are kept;
* the best prompt is the one with the highest accuracy over the whole history, ties broken by
  lower ECE, then by the order of evaluation;
* prompts are compared after whitespace normalization (``" ".join(p.split())``): a candidate
  already seen is never evaluated again, an empty one is dropped;
* ``budget`` is the maximum number of evaluations (seeds included), respected exactly: the search
  stops as soon as it is used up;
* resuming: pass the ``history`` and ``paraphrases`` of an interrupted run. Stored evaluations
  are reused instead of calling ``evaluate`` and stored paraphrase lists instead of calling
  ``paraphrase``, so an interrupted-then-resumed run follows the same path and returns the same
  result as an uninterrupted one (as long as the stored state is complete up to the crash,
  which the ``on_evaluation`` / ``on_paraphrases`` callbacks make easy to guarantee).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BUCKET_WIDTH",
    "Candidate",
    "Evaluation",
    "ParaphraseCall",
    "SearchResult",
    "accuracy_bucket",
    "better",
    "normalize_prompt",
    "rank_key",
    "search_prompts",
]

BUCKET_WIDTH = 0.2
_TOP_BUCKET = 4  # [0.8, 1.0]: a perfect score is not a bucket of its own


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate(prompt)`` returns: accuracy and ECE on ``n`` labeled items."""

    accuracy: float
    ece: float
    n: int


@dataclass(frozen=True)
class Candidate:
    """One evaluated prompt: its scores, the round it was found in, and where it came from."""

    prompt: str
    accuracy: float
    ece: float
    n: int
    round: int
    order: int  # 0, 1, 2 … in order of evaluation: the last tie-breaker
    parent: str | None = None  # the kept prompt it paraphrases (None for a seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class ParaphraseCall:
    """One ``paraphrase(parent, m)`` call of round ``round`` and what it returned."""

    round: int
    parent: str
    paraphrases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "parent": self.parent, "paraphrases": list(self.paraphrases)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParaphraseCall:
        return cls(int(data["round"]), str(data["parent"]), tuple(data["paraphrases"]))


@dataclass
class SearchResult:
    """The best prompt and everything the search saw.

    ``evaluations`` counts ``evaluate`` calls made by *this* call (not the reused ones);
    ``stopped`` is ``"budget"`` when the budget ended the search early, else ``"rounds"``
    (or ``"exhausted"`` when no new candidate could be found).
    """

    best: Candidate
    history: list[Candidate]
    kept: list[Candidate]
    paraphrases: list[ParaphraseCall] = field(default_factory=list)
    evaluations: int = 0
    stopped: str = "rounds"


def normalize_prompt(prompt: str) -> str:
    """Whitespace-normalized form used to recognise duplicates."""
    return " ".join(prompt.split())


def accuracy_bucket(accuracy: float) -> int:
    """0 for [0, 0.2), 1 for [0.2, 0.4) … 4 for [0.8, 1.0] (nan counts as the lowest)."""
    if math.isnan(accuracy):
        return -1
    # round() first: 0.6 / 0.2 is 2.9999999999999996 in binary floating point.
    return max(0, min(_TOP_BUCKET, math.floor(round(accuracy / BUCKET_WIDTH, 9))))


def _ece_key(ece: float) -> float:
    return math.inf if math.isnan(ece) else ece


def rank_key(candidate: Candidate) -> tuple[int, float, int]:
    """Sort key for keeping: higher accuracy bucket, then lower ECE, then earlier."""
    return (-accuracy_bucket(candidate.accuracy), _ece_key(candidate.ece), candidate.order)


def _best_key(candidate: Candidate) -> tuple[float, float, int]:
    accuracy = -math.inf if math.isnan(candidate.accuracy) else candidate.accuracy
    return (-accuracy, _ece_key(candidate.ece), candidate.order)


def better(a: Evaluation, b: Evaluation) -> bool:
    """Whether ``a`` beats ``b`` under the ranking rule (bucket, then strictly lower ECE)."""
    bucket_a, bucket_b = accuracy_bucket(a.accuracy), accuracy_bucket(b.accuracy)
    if bucket_a != bucket_b:
        return bucket_a > bucket_b
    return _ece_key(a.ece) < _ece_key(b.ece)


class _Budget(Exception):
    """Internal: the evaluation budget is used up."""


def search_prompts(
    seeds: Sequence[str],
    paraphrase: Callable[[str, int], Iterable[str]],
    evaluate: Callable[[str], Evaluation],
    *,
    k: int = 5,
    m: int = 5,
    n: int = 10,
    budget: int | None = None,
    history: Iterable[Candidate] = (),
    paraphrases: Iterable[ParaphraseCall] = (),
    on_evaluation: Callable[[Candidate], None] | None = None,
    on_paraphrases: Callable[[ParaphraseCall], None] | None = None,
) -> SearchResult:
    """Run the search; see the module docstring for the exact rules.

    ``on_evaluation`` is called after every *new* evaluation and ``on_paraphrases`` after every
    new paraphrase call, so a caller can persist state and resume after a crash by passing it
    back as ``history`` / ``paraphrases``.
    """
    if k < 1 or m < 1 or n < 0:
        raise ValueError("k and m must be >= 1 and n >= 0")
    if budget is not None and budget < 1:
        raise ValueError("budget must be >= 1 (or None)")

    stored = {normalize_prompt(c.prompt): c for c in history}
    stored_calls = {(p.round, normalize_prompt(p.parent)): p for p in paraphrases}
    seen: dict[str, Candidate] = {}  # normalized prompt -> candidate, in evaluation order
    calls: list[ParaphraseCall] = []
    fresh = 0

    def run(prompt: str, round_: int, parent: str | None) -> Candidate | None:
        nonlocal fresh
        prompt = prompt.strip()
        key = normalize_prompt(prompt)
        if not key or key in seen:
            return None
        if budget is not None and len(seen) >= budget:
            raise _Budget
        previous = stored.get(key)
        if previous is not None:
            candidate = Candidate(
                previous.prompt, previous.accuracy, previous.ece, previous.n,
                round_, len(seen), parent,
            )  # fmt: skip
        else:
            result = evaluate(prompt)
            fresh += 1
            candidate = Candidate(
                prompt, float(result.accuracy), float(result.ece), int(result.n),
                round_, len(seen), parent,
            )  # fmt: skip
            if on_evaluation is not None:
                on_evaluation(candidate)
        seen[key] = candidate
        return candidate

    def ask(parent: Candidate, round_: int) -> tuple[str, ...]:
        call = stored_calls.get((round_, normalize_prompt(parent.prompt)))
        if call is None:
            texts = tuple(str(t) for t in paraphrase(parent.prompt, m))
            call = ParaphraseCall(round_, parent.prompt, texts)
            if on_paraphrases is not None:
                on_paraphrases(call)
        calls.append(call)
        return call.paraphrases

    kept: list[Candidate] = []
    stopped = "rounds"
    try:
        for seed in seeds:
            candidate = run(seed, 0, None)
            if candidate is not None:
                kept.append(candidate)
        kept = sorted(kept, key=rank_key)[:k]
        for round_ in range(1, n + 1):
            new: list[Candidate] = []
            try:
                for parent in kept:
                    for text in ask(parent, round_):
                        candidate = run(text, round_, parent.prompt)
                        if candidate is not None:
                            new.append(candidate)
            finally:
                kept = sorted([*kept, *new], key=rank_key)[:k]
            if not new:
                stopped = "exhausted"
                break
    except _Budget:
        stopped = "budget"
    if not seen:
        raise ValueError("no prompt to evaluate: the seeds are empty")
    history_out = list(seen.values())
    return SearchResult(
        best=min(history_out, key=_best_key),
        history=history_out,
        kept=sorted(kept, key=rank_key)[:k],
        paraphrases=calls,
        evaluations=fresh,
        stopped=stopped,
    )
