"""Raw scores from OpenAI/vLLM logprobs: the option distribution at the answer position, or
length-normalized sequence features (DESIGN §3).

This runs on every response, so it is plain Python over the dicts the engine returned (no numpy
per token): a typical short multiple-choice answer costs a few microseconds.

Accepted ``logprobs`` shapes (anything else that is empty or ``None`` means "no logprobs"):

* chat: ``choice["logprobs"]`` = ``{"content": [{token, logprob, bytes, top_logprobs: [...]}]}``,
  or directly that ``content`` list, or the whole ``choice`` (it has a ``"logprobs"`` key);
* legacy completions: ``{"tokens": [...], "token_logprobs": [...], "top_logprobs": [{tok: lp}]}``.

Answer-position rule (options mode). Options and tokens are compared after
:func:`normalize_token`, case-sensitively. Scanning the generated tokens in order, the answer
position is the first token whose normalized text

1. equals an option's normalized label (for example " B", "(B", "B." for option "B"), or
2. is a non-empty *proper prefix* of exactly one option's normalized label (the first token of a
   multi-token option such as " Burk" for "Burkina Faso").

An exact label wins over a prefix (with options "A" and "All of the above", the token "A" is
option "A"). Rule 2 is what makes string options work without the model's tokenizer; its price
is that a word which happens to start exactly one option ("I" for "Italy") is taken as the answer,
so prompts should make the model answer first.

At that position a top-logprob entry is a *variant* of an option under the same two rules, except
that a prefix shared by several options counts for every one of them: options whose first tokens
collide (" Bur" for "Burkina Faso" and "Burundi") are scored together, since one position cannot
tell them apart. Short prefixes count too (" A" for "Asunción"): like the floor below, an option's
score errs upwards, never downwards. An option's logprob is the log-sum-exp of its variants (the
sampled token included, even if the engine left it out of ``top_logprobs``). An option with no
variant gets the smallest listed top-K logprob, an upper bound on its true logprob, and is flagged
``truncated``; without any top-K list the bound is ``log(1 - p_sampled)``.

Sequence mode uses every generated token that has a logprob, including a stop token the engine
reports but strips from the text (vLLM does with a newline stop string): "the answer ends here"
is part of the answer's probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "OptionScore",
    "SequenceScore",
    "normalize_token",
    "score_options",
    "score_sequence",
]

# Whitespace, the punctuation DESIGN §3 names, and the tokenizers' visible space/newline markers
# (SentencePiece "▁", GPT-2 byte-level "Ġ" for space and "Ċ" for newline).
_STRIP_CHARS = " \t\n\r\x0b\x0c\xa0().:\u2581\u0120\u010a"


def normalize_token(text: str) -> str:
    """Strip whitespace, ``( ) . :`` and tokenizer space markers from both ends.

    So that " B", "B", "(B", "B.", "(B)" and "▁B" all name option "B". Case is kept: "b" is not "B".
    """
    return text.strip(_STRIP_CHARS)


def _softmax(logprobs: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Softmax of ``logprobs / temperature`` in plain Python (k is tiny; numpy would be slower)."""
    scaled = [lp / temperature for lp in logprobs]
    top = max(scaled)
    if top == -math.inf:
        return [math.nan] * len(scaled)
    exps = [math.exp(s - top) for s in scaled]
    total = sum(exps)
    return [e / total for e in exps]


@dataclass(frozen=True)
class OptionScore:
    """The engine's distribution over the named options at the answer position.

    ``option_logprobs`` and ``truncated`` are empty when no answer position was found.
    """

    options: tuple[str, ...]
    option_logprobs: tuple[float, ...]
    truncated: tuple[bool, ...]
    answer: str | None
    answer_index: int | None
    position: int | None

    @property
    def found(self) -> bool:
        """Whether the generated text named one of the options."""
        return self.answer_index is not None

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """Option probabilities ``softmax(option_logprobs / T)``, restricted to the options.

        Exact temperature scaling: log-softmax differences are logit differences.
        """
        if not self.option_logprobs:
            return np.zeros(0)
        return np.asarray(_softmax(self.option_logprobs, temperature))

    @property
    def raw_confidence(self) -> float | None:
        """Probability of the chosen option at T=1, or None when no option was found."""
        if self.answer_index is None or not self.option_logprobs:
            return None
        return _softmax(self.option_logprobs)[self.answer_index]


@dataclass(frozen=True)
class SequenceScore:
    """Length-normalized features of a free-form answer."""

    mean_logprob: float | None
    min_logprob: float | None
    n_tokens: int

    @property
    def raw_confidence(self) -> float | None:
        """``exp(mean token logprob)`` (geometric-mean token probability); None without tokens."""
        if self.mean_logprob is None or self.n_tokens == 0:
            return None
        return math.exp(self.mean_logprob)


# --------------------------------------------------------------------------------------------
# Reading the two logprob shapes


def _steps(logprobs: Any) -> tuple[str, Any]:
    """Classify ``logprobs`` as ("chat", content list), ("legacy", dict) or ("none", None)."""
    if not logprobs:
        return "none", None
    if isinstance(logprobs, dict):
        if "content" in logprobs:
            content = logprobs["content"]
            return ("chat", content) if content else ("none", None)
        if "tokens" in logprobs:
            return ("legacy", logprobs) if logprobs["tokens"] else ("none", None)
        if "logprobs" in logprobs:  # a whole choice
            return _steps(logprobs["logprobs"])
        return "none", None
    if isinstance(logprobs, list | tuple):
        return "chat", logprobs
    return "none", None


@dataclass(frozen=True)
class _OptionIndex:
    """Lookup tables from a normalized token to options, built once per option set."""

    answer: dict[str, int]  # tokens that fix the answer position -> the option they name
    variants: dict[str, tuple[int, ...]]  # tokens that count towards options at that position


@lru_cache(maxsize=256)
def _option_index(options: tuple[str, ...]) -> _OptionIndex:
    exact: dict[str, list[int]] = {}
    prefix: dict[str, list[int]] = {}
    for i, option in enumerate(options):
        label = normalize_token(option)
        if not label:
            continue
        exact.setdefault(label, []).append(i)
        for end in range(1, len(label)):
            stub = normalize_token(label[:end])
            if stub and stub != label:
                bucket = prefix.setdefault(stub, [])
                if i not in bucket:
                    bucket.append(i)
    variants = {k: tuple(v) for k, v in prefix.items() if k not in exact}
    variants.update((k, tuple(v)) for k, v in exact.items())
    answer = {k: v[0] for k, v in prefix.items() if k not in exact and len(v) == 1}
    answer.update((k, v[0]) for k, v in exact.items())
    return _OptionIndex(answer=answer, variants=variants)


def _floor(top_k_min: float, sampled_lp: float | None) -> float:
    """Upper bound for an option absent from the listed candidates."""
    if top_k_min != math.inf:
        return top_k_min
    if sampled_lp is not None and sampled_lp < 0.0:
        # No top-K list at all: the mass the sampled token leaves is the only bound there is.
        return math.log1p(-math.exp(sampled_lp))
    return -math.inf


def _finish(
    found: list[list[float] | None], floor: float
) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    scores = []
    for lps in found:
        if lps is None:
            scores.append(floor)
        elif len(lps) == 1:
            scores.append(lps[0])
        else:
            top = max(lps)
            total = sum(math.exp(lp - top) for lp in lps) if top != -math.inf else 1.0
            scores.append(top + math.log(total))
    return tuple(scores), tuple(lps is None for lps in found)


def _score_chat_step(
    entry: dict[str, Any], variants: dict[str, tuple[int, ...]], n_options: int
) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    found: list[list[float] | None] = [None] * n_options
    sampled, sampled_lp = entry.get("token"), entry.get("logprob")
    sampled_listed = False
    floor = math.inf
    for candidate in entry.get("top_logprobs") or ():
        token, lp = candidate["token"], candidate["logprob"]
        if lp < floor:
            floor = lp
        if token == sampled:
            sampled_listed = True
        hits = variants.get(token.strip(_STRIP_CHARS))
        if hits:
            for i in hits:
                bucket = found[i]
                if bucket is None:
                    found[i] = [lp]
                else:
                    bucket.append(lp)
    if not sampled_listed and sampled is not None and sampled_lp is not None:
        for i in variants.get(sampled.strip(_STRIP_CHARS), ()):
            bucket = found[i]
            if bucket is None:
                found[i] = [sampled_lp]
            else:
                bucket.append(sampled_lp)
    return _finish(found, _floor(floor, sampled_lp))


def _score_legacy_step(
    token: str,
    sampled_lp: float | None,
    top: dict[str, float] | None,
    variants: dict[str, tuple[int, ...]],
    n_options: int,
) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    found: list[list[float] | None] = [None] * n_options
    pairs = list(top.items()) if top else []
    floor = min((lp for _, lp in pairs), default=math.inf)
    if sampled_lp is not None and (not top or token not in top):
        pairs.append((token, sampled_lp))
    for candidate, lp in pairs:
        for i in variants.get(candidate.strip(_STRIP_CHARS), ()):
            bucket = found[i]
            if bucket is None:
                found[i] = [lp]
            else:
                bucket.append(lp)
    return _finish(found, _floor(floor, sampled_lp))


def score_options(logprobs: Any, options: Sequence[str]) -> OptionScore:
    """Locate the answer among ``options`` and read the option distribution there.

    See the module docstring for the matching rule. Never raises on missing or empty logprobs:
    the result then has ``answer=None``.
    """
    opts = tuple(options)
    index = _option_index(opts)
    answer_of, variants = index.answer, index.variants
    kind, steps = _steps(logprobs)
    if kind == "none" or not answer_of:
        return OptionScore(opts, (), (), None, None, None)

    if kind == "chat":
        for t, entry in enumerate(steps):
            token = entry.get("token")
            if token is None:
                continue
            i = answer_of.get(token.strip(_STRIP_CHARS))
            if i is None:
                continue
            scores, truncated = _score_chat_step(entry, variants, len(opts))
            return OptionScore(opts, scores, truncated, opts[i], i, t)
        return OptionScore(opts, (), (), None, None, None)

    token_lps = steps.get("token_logprobs") or []
    tops = steps.get("top_logprobs") or []
    for t, token in enumerate(steps.get("tokens") or ()):
        if token is None:
            continue
        i = answer_of.get(token.strip(_STRIP_CHARS))
        if i is None:
            continue
        lp = token_lps[t] if t < len(token_lps) else None
        top = tops[t] if t < len(tops) else None
        scores, truncated = _score_legacy_step(token, lp, top, variants, len(opts))
        return OptionScore(opts, scores, truncated, opts[i], i, t)
    return OptionScore(opts, (), (), None, None, None)


# --------------------------------------------------------------------------------------------
# Sequences


def score_sequence(logprobs: Any) -> SequenceScore:
    """Mean and min token logprob over all generated tokens (tokens without a logprob skipped)."""
    kind, steps = _steps(logprobs)
    if kind == "chat":
        lps = [e["logprob"] for e in steps if e.get("logprob") is not None]
    elif kind == "legacy":
        lps = [lp for lp in steps.get("token_logprobs") or () if lp is not None]
    else:
        lps = []
    if not lps:
        return SequenceScore(None, None, 0)
    return SequenceScore(sum(lps) / len(lps), min(lps), len(lps))
