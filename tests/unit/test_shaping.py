"""Trimming logprobs back to vLLM's own answer: the rules, on data recorded from vLLM 0.32.

The cases below are what the real engine (Gemma 3 270M) returned for the same request with
`logprobs=20` and with the client's smaller `logprobs` (see tests/integration/
test_differential.py for the live comparison).
"""

from __future__ import annotations

from service.proxy import LogprobWish, trim_chat_choice, trim_completion_choice


def legacy_choice(tops: list, prompt_logprobs: list | None = None) -> dict:
    return {
        "index": 0,
        "text": "x",
        "logprobs": {
            "tokens": [next(iter(t)) if t else "<bos>" for t in tops],
            "token_logprobs": [next(iter(t.values())) if t else None for t in tops],
            "top_logprobs": tops,
            "text_offset": list(range(len(tops))),
        },
        "prompt_logprobs": prompt_logprobs,
    }


def test_a_sampled_token_tied_with_the_top_token_is_not_in_vllms_top_1():
    """Greedy sampling took "\\n", tied with ","; vLLM's top-1 holds ",", so logprobs=1
    returns both (recorded: {"\\n": -1.2967, ",": -1.2967})."""
    top = {"\n": -1.2967501878738403, ",": -1.2967501878738403, "\n\n": -2.29675, ".": -2.54675}
    choice = legacy_choice([top])
    trim_completion_choice(choice, LogprobWish(True, 1))
    assert choice["logprobs"]["top_logprobs"] == [
        {"\n": -1.2967501878738403, ",": -1.2967501878738403}
    ]


def test_logprobs_zero_keeps_the_sampled_token_only():
    choice = legacy_choice([{" B": -1.0, " A": -0.5, " C": -2.0}])
    trim_completion_choice(choice, LogprobWish(True, 0))
    assert choice["logprobs"]["top_logprobs"] == [{" B": -1.0}]


def test_a_prompt_tokens_rank_is_recounted_for_the_clients_n():
    """Recorded: " France" (tied with " one" at -5.0729) is 11th in vLLM's top-20, so its rank
    there is 11; for logprobs=10 vLLM reports the tokens at least as likely: 12."""
    alternatives = [
        (" the", -0.82),
        (" South", -4.07),
        (" a", -4.07),
        (" Georgia", -4.45),
        (" India", -4.70),
        (" New", -4.82),
        (" ", -4.82),
        (" this", -4.82),
        (" Turkey", -4.95),
        (" Nigeria", -4.95),
        (" one", -5.0729),
        (" Iran", -5.20),
    ]
    entry = {"7001": {"logprob": -5.0729, "rank": 11, "decoded_token": " France"}}
    for i, (token, lp) in enumerate(alternatives):
        entry[str(100 + i)] = {
            "logprob": lp,
            "rank": i + 1 if i < 10 else i + 2,
            "decoded_token": token,
        }
    top = {" France": -5.0729, **dict(alternatives)}
    choice = legacy_choice([None, top], [None, entry])
    choice["text"] = "The capital of France"
    trim_completion_choice(choice, LogprobWish(True, 10, echo=True))
    kept = choice["prompt_logprobs"][1]
    assert kept["7001"]["rank"] == 12
    assert len(kept) == 11 and all(v["rank"] <= 10 for k, v in kept.items() if k != "7001")
    assert list(choice["logprobs"]["top_logprobs"][1]) == [" France"] + [
        a for a, _ in alternatives[:10]
    ]


def test_logprob_token_ids_are_returned_as_the_engine_listed_them():
    choice = legacy_choice([{" B": -1.0, " A": -0.5, " C": -2.0}])
    trim_completion_choice(choice, LogprobWish(True, 0, listed=True))
    assert choice["logprobs"]["top_logprobs"] == [{" B": -1.0, " A": -0.5, " C": -2.0}]


def test_chat_keeps_the_first_n_of_vllms_list():
    entry = {
        "token": " C",
        "logprob": -2.0,
        "bytes": [32, 67],
        "top_logprobs": [
            {"token": " C", "logprob": -2.0, "bytes": [32, 67]},
            {"token": " A", "logprob": -0.3, "bytes": [32, 65]},
            {"token": " B", "logprob": -1.5, "bytes": [32, 66]},
        ],
    }
    choice = {"index": 0, "logprobs": {"content": [entry]}}
    trim_chat_choice(choice, LogprobWish(True, 2))
    assert [t["token"] for t in entry["top_logprobs"]] == [" C", " A"]
