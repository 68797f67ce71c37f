"""`calibrators.search_prompts`: the APE-style loop with deterministic callables."""

from __future__ import annotations

import math

import pytest

from calibrators import (
    Candidate,
    Evaluation,
    accuracy_bucket,
    better,
    normalize_prompt,
    rank_key,
    search_prompts,
)

SEEDS = ["The answer might be", "The answer must be"]

# A tiny "world": each prompt's paraphrases and its score. The planted best prompt is only
# reachable in round 2, through a mediocre round-1 prompt.
TREE = {
    "The answer might be": ["Maybe the answer is", "The answer could be"],
    "The answer must be": ["Surely the answer is", "The answer has to be"],
    "Maybe the answer is": ["PLANTED best"],
    "The answer could be": ["The answer could be  ", "Perhaps it is"],
    "Surely the answer is": ["Certainly it is"],
    "The answer has to be": ["It has to be"],
}
SCORES = {
    "The answer might be": (0.50, 0.10),
    "The answer must be": (0.45, 0.20),
    "Maybe the answer is": (0.55, 0.05),
    "The answer could be": (0.30, 0.01),
    "Surely the answer is": (0.41, 0.30),
    "The answer has to be": (0.20, 0.02),
    "PLANTED best": (0.90, 0.08),
    "Perhaps it is": (0.52, 0.15),
    "Certainly it is": (0.44, 0.12),
    "It has to be": (0.10, 0.01),
}


class World:
    def __init__(self, fail_after: int | None = None) -> None:
        self.evaluated: list[str] = []
        self.asked: list[str] = []
        self.fail_after = fail_after

    def paraphrase(self, prompt: str, m: int) -> list[str]:
        self.asked.append(prompt)
        return TREE.get(normalize_prompt(prompt), [])[:m]

    def evaluate(self, prompt: str) -> Evaluation:
        if self.fail_after is not None and len(self.evaluated) >= self.fail_after:
            raise RuntimeError("crash")
        self.evaluated.append(prompt)
        accuracy, ece = SCORES.get(normalize_prompt(prompt), (0.0, 1.0))
        return Evaluation(accuracy, ece, 100)


def test_finds_the_planted_best_prompt() -> None:
    world = World()
    result = search_prompts(SEEDS, world.paraphrase, world.evaluate, k=2, m=2, n=3)
    assert result.best.prompt == "PLANTED best"
    assert result.best.round == 2
    assert result.best.parent == "Maybe the answer is"


def test_history_records_every_candidate_with_scores_and_round() -> None:
    world = World()
    result = search_prompts(SEEDS, world.paraphrase, world.evaluate, k=2, m=2, n=3)
    assert [c.prompt for c in result.history] == world.evaluated
    for c in result.history:
        assert (c.accuracy, c.ece) == SCORES[normalize_prompt(c.prompt)]
    assert [c.order for c in result.history] == list(range(len(result.history)))
    assert {c.round for c in result.history if c.prompt in SEEDS} == {0}


def test_accuracy_buckets_have_width_point_two() -> None:
    assert [accuracy_bucket(a) for a in (0.0, 0.19, 0.2, 0.39, 0.6, 0.79, 0.8, 1.0)] == [
        0,
        0,
        1,
        1,
        3,
        3,
        4,
        4,
    ]
    assert accuracy_bucket(math.nan) == -1


def test_ranking_bucket_first_then_ece() -> None:
    a = Candidate("a", 0.41, 0.30, 10, 0, 0)  # bucket 2, bad ECE
    b = Candidate("b", 0.59, 0.10, 10, 0, 1)  # bucket 2, good ECE: beats a
    c = Candidate("c", 0.60, 0.50, 10, 0, 2)  # bucket 3: beats both despite ECE
    d = Candidate("d", 0.59, 0.10, 10, 0, 3)  # ties b exactly: the earlier one (b) wins
    assert [x.prompt for x in sorted([a, b, c, d], key=rank_key)] == ["c", "b", "d", "a"]


def test_keep_top_k_by_rank_not_by_raw_accuracy() -> None:
    # Two seeds in the same bucket: the lower-ECE one is kept with k=1 even though less accurate.
    scores = {"hi-acc": (0.59, 0.30), "lo-ece": (0.41, 0.01)}
    asked: list[str] = []

    def paraphrase(prompt: str, m: int) -> list[str]:
        asked.append(prompt)
        return []

    search_prompts(
        ["hi-acc", "lo-ece"],
        paraphrase,
        lambda p: Evaluation(*scores[p], 10),
        k=1,
        m=1,
        n=1,
    )
    assert asked == ["lo-ece"]


def test_best_is_highest_accuracy_ties_by_lower_ece() -> None:
    scores = {"a": (0.7, 0.2), "b": (0.7, 0.1), "c": (0.69, 0.0)}
    result = search_prompts(
        list(scores), lambda p, m: [], lambda p: Evaluation(*scores[p], 10), k=3, n=1
    )
    assert result.best.prompt == "b"


def test_budget_is_respected_exactly() -> None:
    # Unlimited, this search evaluates 7 prompts: every budget below that stops it early.
    for budget in (1, 2, 3, 5, 6):
        world = World()
        result = search_prompts(
            SEEDS, world.paraphrase, world.evaluate, k=2, m=2, n=5, budget=budget
        )
        assert len(world.evaluated) == budget
        assert len(result.history) == budget
        assert result.stopped == "budget"


def test_duplicates_are_never_evaluated_twice() -> None:
    def paraphrase(prompt: str, m: int) -> list[str]:
        return ["  The answer\tmight be ", "", "new one", "new  one", "The answer must be"]

    world = World()
    result = search_prompts(SEEDS, paraphrase, world.evaluate, k=2, m=5, n=3)
    keys = [normalize_prompt(p) for p in world.evaluated]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted([*SEEDS, "new one"])
    assert result.stopped == "exhausted"


def test_duplicate_seeds_are_evaluated_once() -> None:
    world = World()
    search_prompts([SEEDS[0], SEEDS[0] + " ", SEEDS[1]], world.paraphrase, world.evaluate, n=0)
    assert world.evaluated == SEEDS


def test_resume_after_a_crash_gives_the_uninterrupted_result() -> None:
    reference = search_prompts(SEEDS, World().paraphrase, World().evaluate, k=2, m=2, n=3)

    for crash_at in range(1, len(reference.history)):
        saved: list[Candidate] = []
        calls = []
        world = World(fail_after=crash_at)
        with pytest.raises(RuntimeError):
            search_prompts(
                SEEDS,
                world.paraphrase,
                world.evaluate,
                k=2,
                m=2,
                n=3,
                on_evaluation=saved.append,
                on_paraphrases=calls.append,
            )
        assert len(saved) == crash_at

        again = World()
        resumed = search_prompts(
            SEEDS,
            again.paraphrase,
            again.evaluate,
            k=2,
            m=2,
            n=3,
            history=saved,
            paraphrases=calls,
        )
        # No candidate is evaluated twice across the two runs, and the result is the same.
        both = [normalize_prompt(p) for p in world.evaluated + again.evaluated]
        assert len(both) == len(set(both)) == len(reference.history)
        assert resumed.best == reference.best
        assert resumed.history == reference.history
        assert resumed.evaluations == len(reference.history) - crash_at
        # Stored paraphrase calls are reused, not asked again.
        assert len(again.asked) == len(reference.paraphrases) - len(calls)


def test_better_uses_the_same_rule() -> None:
    assert better(Evaluation(0.61, 0.3, 10), Evaluation(0.59, 0.0, 10))  # higher bucket
    assert better(Evaluation(0.41, 0.1, 10), Evaluation(0.59, 0.2, 10))  # same bucket, lower ECE
    assert not better(Evaluation(0.5, 0.1, 10), Evaluation(0.5, 0.1, 10))  # a tie is not better


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        search_prompts(SEEDS, World().paraphrase, World().evaluate, k=0)
    with pytest.raises(ValueError):
        search_prompts(SEEDS, World().paraphrase, World().evaluate, budget=0)
    with pytest.raises(ValueError):
        search_prompts(["  "], World().paraphrase, World().evaluate)
