"""Raw scores from OpenAI/vLLM logprobs: a distribution over named answer options, or
length-normalized sequence features. Pure Python over the dicts the engine returned.

Accepted ``logprobs`` shapes (anything else that is empty or ``None`` means "no logprobs"):

* chat: ``choice["logprobs"]`` = ``{"content": [{token, logprob, bytes, top_logprobs: [...]}]}``,
  or directly that ``content`` list, or the whole ``choice`` (it has a ``"logprobs"`` key);
* legacy completions: ``{"tokens": [...], "token_logprobs": [...], "top_logprobs": [{tok: lp}]}``.

**Which option the answer names.** Texts are compared *normalized*: tokenizer space markers
("▁", "Ġ", "Ċ") and hyphens read as spaces, accents dropped (NFKD), case folded, and surrounding
whitespace and punctuation stripped. A one-character option ("A", "B", ...) keeps its case, so
the article "a" never names option "A". Scanning the generated tokens in order, the answer
position is the first token where a word starts (after the token's own leading spaces and
punctuation) and the text from there continues with an option's whole normalized text, ending at
a token boundary (only punctuation or spaces may follow inside the last token) and at a word
boundary. If several options match there, the **longest** wins ("New York City" over "New
York"), since the shorter one's text is merely the start of what was written. No match: no
answer (" Q." names neither "Quito" nor "Q"; " Guatemala" does not name "Guatemala City").

**Probabilities along the path** (``scoring="path"``). From the answer position ``s`` on, the
options form a trie walked along the generated tokens. An option *agrees* with the path while
the generated text so far is a prefix of it and the generated token is the longest listed
candidate consistent with it (the top-K token strings stand in for the tokenizer: tokenizers
take the longest piece, so "All" rather than "A" starts "All of the above"). Its log-probability
(relative to position ``s``) is the sum of the generated-token logprobs while it agrees, plus,
at every position, each listed candidate other than the generated token that spells it on —
candidates that complete it (" Lima", "Lima", " Lima," all complete "Lima") and candidates that
continue it (" N", " Ni", " Nia" all start "Niamey"; what follows such a token is unseen and
counted as certain, an upper bound). Distinct tokens are disjoint events, so they add. A
candidate that completes an option belongs to that option alone (" A" is option "A", not the
start of "All of the above"); one that continues several options (" San" for "San Juan" and "San
José") is shared equally and flagged ``truncated``, since one position cannot tell them apart.
No listed candidate where an option departs: the K-th logprob (an upper bound), flagged
``truncated``. The answer itself follows the generated tokens. An option that ends where a
longer one continues ("New York" vs "New York City") gets only the mass that does not continue:
``log(1 - sum p(continuing tokens))``. So options that depart share the path's prefix
probability, and wherever the top-K lists the tokens the distribution over options is exact.

Every continuing candidate counts, not only the longest: under guided decoding (vLLM's
``structured_outputs: {"choice": [...]}``) the top-K at the answer position lists only tokens
the grammar allows — every prefix of every option (" N" at -2.4, " Ni" at -7.0, " Nia" at -16.5
for "Niamey") with the model's relative probabilities renormalized over them. Reading only the
longest prefix gave the other options a sliver of their mass and the answer nearly all of it:
on 120 of the demo's mcq questions with guided choices, raw ECE 0.116 and AUROC 0.668, against
0.068 and 0.784 with every prefix counted (0.052 and 0.784 for the first-position scoring
before the trie walk; free answers, where 65 of 120 named an option: ECE 0.125 vs 0.123). The
masked tokens themselves (logprob -9999, vLLM's -inf) are not the cause: dropping them from the
lists changed none of these numbers.

Multi-token options are scored by the **sum** of their token logprobs (the probability of the
whole sequence), not the mean: options are disjoint events, so sums give a distribution, and a
mean would favour long names. Temperature scaling (``probs(T)``) acts on these option
log-probabilities exactly as on single tokens.

**Exact likelihoods** (``scoring="likelihood"``): the service scores every option's full text
after the prompt (prompt logprobs, as lm-eval's loglikelihood does) and passes the sums in
``likelihoods``; the matching above still decides which option the answer names. An option whose
text is the start of another's gets the mass that does not continue into it.

Sequence mode uses every generated token that has a logprob, including a stop token the engine
reports but strips from the text (vLLM does with a newline stop string): "the answer ends here"
is part of the answer's probability.
"""

from __future__ import annotations

import bisect
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .vocab import Scoring

__all__ = [
    "SEQUENCE_FEATURE_SETS",
    "SEQUENCE_SIGNALS",
    "OptionScore",
    "SequenceScore",
    "normalize_token",
    "score_options",
    "score_sequence",
]

# Whitespace, ( ) . : and the tokenizers' visible space/newline markers (SentencePiece "▁",
# GPT-2 byte-level "Ġ" for space and "Ċ" for newline).
_STRIP_CHARS = " \t\n\r\x0b\x0c\xa0().:\u2581\u0120\u010a"
# Space markers read as spaces; hyphens and dashes too ("Saint-Pierre" is "Saint Pierre"). One
# character for one, so offsets in a token's folded text stay put.
_MARKERS = str.maketrans(
    {"\u2581": " ", "\u0120": " ", "\u010a": "\n", "-": " ", "\u2010": " ", "\u2011": " "}
    | {"\u2012": " ", "\u2013": " ", "\u2014": " "}
)
_EXTRA_STRIP = frozenset("`~")
_SHARE_FLOOR = 1e-12  # least mass left to an option that longer options continue


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
    """The engine's distribution over the named options, from the answer position on.

    ``option_logprobs`` and ``truncated`` are empty when the answer names no option.
    ``scoring`` says where the option log-probabilities came from: "path" (the generated tokens
    and their top-K) or "likelihood" (each option's full text scored after the prompt).
    """

    options: tuple[str, ...]
    option_logprobs: tuple[float, ...]
    truncated: tuple[bool, ...]
    answer: str | None
    answer_index: int | None
    position: int | None
    scoring: Scoring = "path"

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


#: Names of the sequence signals (:meth:`SequenceScore.signals`), each a feature of the refit's
#: logistic candidates. Probabilities enter as logits so that a linear map over them is Platt
#: scaling of that one signal.
SEQUENCE_SIGNALS = (
    "first_token_logit",
    "min_token_logit",
    "joint_logit",
    "first_margin",
    "n_tokens",
)

#: The refit's default logistic candidates over sequence signals (``refit_feature_sets``): each
#: signal alone, and all of them with ``confidence_logit`` (the logit of exp(mean logprob)).
#: A candidate whose signals the labels do not carry (``first_margin`` needs top-K logprobs,
#: which sequence mode does not ask for unless the client does) is skipped.
SEQUENCE_FEATURE_SETS: tuple[tuple[str, ...], ...] = (
    ("first_token_logit",),
    ("min_token_logit",),
    ("joint_logit",),
    ("first_margin",),
    ("confidence_logit", "first_token_logit", "min_token_logit", "joint_logit", "n_tokens"),
)

_SIGNAL_EPS = 1e-6  # probabilities clipped to [eps, 1 - eps] before the logit (as confidence_logit)


def _logit_of_logprob(logprob: float) -> float:
    """``logit(exp(logprob))`` with the probability clipped to [eps, 1 - eps]."""
    p = min(max(math.exp(logprob), _SIGNAL_EPS), 1.0 - _SIGNAL_EPS)
    return math.log(p) - math.log1p(-p)


@dataclass(frozen=True)
class SequenceScore:
    """Features of a free-form answer, all from the generated tokens' logprobs.

    ``sum_logprob`` is the log of the answer's joint probability; ``first_logprob`` the first
    token's logprob; ``first_margin`` the log-odds between the two most likely tokens at the
    first position (None when the engine listed fewer than two candidates there, e.g. no
    ``top_logprobs`` were asked for).
    """

    mean_logprob: float | None
    min_logprob: float | None
    n_tokens: int
    first_logprob: float | None = None
    sum_logprob: float | None = None
    first_margin: float | None = None

    @property
    def raw_confidence(self) -> float | None:
        """``exp(mean token logprob)`` (geometric-mean token probability); None without tokens."""
        if self.mean_logprob is None or self.n_tokens == 0:
            return None
        return math.exp(self.mean_logprob)

    def signals(self) -> dict[str, float]:
        """The named signals of :data:`SEQUENCE_SIGNALS` this answer has (docs/refit.md):

        * ``first_token_logit``: ``logit(p)`` of the first generated token's probability;
        * ``min_token_logit``: ``logit`` of the least likely generated token's probability;
        * ``joint_logit``: ``logit`` of the joint probability ``exp(sum of logprobs)``;
        * ``first_margin``: ``logprob(top 1) - logprob(top 2)`` at the first position (>= 0);
        * ``n_tokens``: the number of generated tokens with a logprob.

        Probabilities are clipped to [1e-6, 1 - 1e-6] before the logit. Empty without tokens.
        """
        if self.n_tokens == 0 or self.min_logprob is None:
            return {}
        out = {"min_token_logit": _logit_of_logprob(self.min_logprob)}
        if self.first_logprob is not None:
            out["first_token_logit"] = _logit_of_logprob(self.first_logprob)
        if self.sum_logprob is not None:
            out["joint_logit"] = _logit_of_logprob(self.sum_logprob)
        if self.first_margin is not None:
            out["first_margin"] = self.first_margin
        out["n_tokens"] = float(self.n_tokens)
        return out


# --------------------------------------------------------------------------------------------
# Normalized text


@lru_cache(maxsize=65536)
def _fold(text: str, keep_case: bool) -> str:
    """Markers as spaces, case folded (unless ``keep_case``), accents dropped."""
    text = text.translate(_MARKERS)
    if not keep_case:
        text = text.casefold()
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


@lru_cache(maxsize=4096)
def _is_strip(char: str) -> bool:
    return char.isspace() or unicodedata.category(char)[0] == "P" or char in _EXTRA_STRIP


@lru_cache(maxsize=65536)
def _fold_word(text: str, keep_case: bool) -> str:
    """``_fold`` without leading spaces and punctuation: a token where an answer starts."""
    return _lstrip(_fold(text, keep_case))


# The ASCII characters `_is_strip` accepts: str.strip on them is the fast path.
_ASCII_STRIP = "".join(c for c in map(chr, range(128)) if _is_strip(c))


def _lstrip(text: str) -> str:
    text = text.lstrip(_ASCII_STRIP)
    if not text or text[0].isascii():
        return text
    i = 0
    while i < len(text) and _is_strip(text[i]):
        i += 1
    return _lstrip(text[i:]) if i else text


def _rstrip(text: str) -> str:
    text = text.rstrip(_ASCII_STRIP)
    if not text or text[-1].isascii():
        return text
    j = len(text)
    while j > 0 and _is_strip(text[j - 1]):
        j -= 1
    return _rstrip(text[:j]) if j < len(text) else text


def _word_joined(left: str, right: str) -> bool:
    """Whether ``left`` followed by ``right`` continue one word (no boundary between them).

    Scripts written without spaces (CJK) have no word boundaries to check.
    """
    return (
        left.isalnum()
        and right.isalnum()
        and unicodedata.east_asian_width(left) not in "WF"
        and unicodedata.east_asian_width(right) not in "WF"
    )


@dataclass(frozen=True)
class _Label:
    text: str  # normalized option text ("" for an option that is only punctuation)
    keep_case: bool


@lru_cache(maxsize=256)
def _labels(options: tuple[str, ...]) -> tuple[_Label, ...]:
    out = []
    for option in options:
        cased = _rstrip(_lstrip(_fold(option, True)))
        keep_case = len(cased) == 1
        text = cased if keep_case else _rstrip(_lstrip(_fold(option, False)))
        out.append(_Label(text, keep_case))
    return tuple(out)


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


class _Path:
    """The generated tokens with their logprobs and top-K candidates, in one shape."""

    __slots__ = ("_legacy", "_tops", "logprobs", "tokens")

    def __init__(self, kind: str, steps: Any) -> None:
        self._legacy = kind == "legacy"
        if self._legacy:
            self.tokens = [t if isinstance(t, str) else "" for t in steps.get("tokens") or ()]
            n = len(self.tokens)
            lps = list(steps.get("token_logprobs") or ())[:n]
            tops = list(steps.get("top_logprobs") or ())[:n]
        else:
            self.tokens = [e.get("token") or "" if isinstance(e, dict) else "" for e in steps]
            n = len(self.tokens)
            lps = [e.get("logprob") if isinstance(e, dict) else None for e in steps]
            tops = [e.get("top_logprobs") if isinstance(e, dict) else None for e in steps]
        self.logprobs: list[float | None] = lps + [None] * (n - len(lps))
        self._tops: list[Any] = tops + [None] * (n - len(tops))

    def __len__(self) -> int:
        return len(self.tokens)

    def candidates(self, i: int) -> tuple[list[tuple[str, float]], int | None]:
        """The listed candidates at ``i`` plus the generated token (appended last when it is not
        listed); the generated one's index."""
        sampled, sampled_lp = self.tokens[i], self.logprobs[i]
        top = self._tops[i]
        if self._legacy:
            pairs = list(top.items()) if isinstance(top, dict) else []
        else:
            pairs = [
                (c["token"], c["logprob"])
                for c in top or ()
                if isinstance(c, dict) and c.get("logprob") is not None and "token" in c
            ]
        at = next((k for k, (tok, _) in enumerate(pairs) if tok == sampled), None)
        if at is None and sampled_lp is not None:
            pairs.append((sampled, sampled_lp))
            at = len(pairs) - 1
        return pairs, at

    def floor(self, i: int, candidates: Any = None) -> float:
        """Upper bound on the logprob of a token not listed at ``i``: the K-th listed logprob."""
        pairs, at = candidates or self.candidates(i)
        appended = at is not None and at == len(pairs) - 1 and not self._listed(i)
        listed = pairs[:-1] if appended else pairs
        if listed:
            return min(lp for _, lp in listed)
        sampled_lp = self.logprobs[i]
        if sampled_lp is not None and sampled_lp < 0.0:
            # No top-K list at all: the mass the sampled token leaves is the only bound there is.
            return math.log1p(-math.exp(sampled_lp))
        return -math.inf

    def _listed(self, i: int) -> bool:
        top = self._tops[i]
        sampled = self.tokens[i]
        if self._legacy:
            return isinstance(top, dict) and sampled in top
        return any(isinstance(c, dict) and c.get("token") == sampled for c in top or ())


# --------------------------------------------------------------------------------------------
# Matching


@dataclass(frozen=True)
class _Match:
    index: int  # the option
    position: int  # token where its text starts


def _match(tokens: list[str], labels: tuple[_Label, ...]) -> _Match | None:
    """The first token position where the text continues with a whole option (longest wins)."""
    found: dict[int, tuple[int, int]] = {}  # position -> (-len, option index)
    for keep_case in {label.keep_case for label in labels if label.text}:
        by_first: dict[str, list[tuple[int, str]]] = {}
        for j, label in enumerate(labels):
            if label.text and label.keep_case == keep_case:
                by_first.setdefault(label.text[0], []).append((j, label.text))
        pieces = [_fold(t, keep_case) for t in tokens]
        ends = []
        total = 0
        for piece in pieces:
            total += len(piece)
            ends.append(total)
        text = "".join(pieces)
        limit = min(found) if found else len(tokens)
        for i in range(min(limit + 1, len(tokens))):
            piece = pieces[i]
            lead = len(piece) - len(_lstrip(piece))
            if lead == len(piece):
                continue
            start = ends[i] - len(piece) + lead
            if start > 0 and _word_joined(text[start - 1], text[start]):
                continue
            best = None
            for j, label_text in by_first.get(text[start], ()):
                if not text.startswith(label_text, start):
                    continue
                end = start + len(label_text)
                k = bisect.bisect_left(ends, end)  # the token holding the option's last char
                tail = text[end : ends[k]]
                if tail and any(not _is_strip(c) for c in tail):
                    continue  # ends inside a token ("Lima" in " Limassol")
                if not tail and end < len(text) and _word_joined(label_text[-1], text[end]):
                    continue
                if best is None or len(label_text) > best[0]:
                    best = (len(label_text), j)
            if best is not None:
                key = (-best[0], best[1])
                if i not in found or key < found[i]:
                    found[i] = key
                break
    if not found:
        return None
    position = min(found)
    return _Match(found[position][1], position)


# --------------------------------------------------------------------------------------------
# The trie walk along the path


def _lse(values: list[float]) -> float:
    if len(values) == 1 and -math.inf < values[0] < math.inf:
        return values[0] + 0.0  # the usual case: the same value as below (log(exp(0)) is 0.0)
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


# (candidates, the generated one's index, their normalized texts, the others by first character)
_Candidates = tuple[list[tuple[str, float]], int | None, list[str], dict[str, list[int]]]


class _Walk:
    """Option log-probabilities from the answer position ``s`` on (see the module docstring)."""

    def __init__(self, path: _Path, s: int, labels: tuple[_Label, ...], answer: int) -> None:
        self.path, self.s, self.labels, self.answer = path, s, labels, answer
        self._candidates: dict[int, tuple[list[tuple[str, float]], int | None]] = {}
        self._floors: dict[int, float] = {}
        self._pieces: dict[tuple[int, bool], _Candidates] = {}

    def piece(self, token: str, i: int, keep_case: bool) -> str:
        return _fold_word(token, keep_case) if i == self.s else _fold(token, keep_case)

    def candidates(self, i: int, keep_case: bool) -> _Candidates:
        """The candidates at ``i`` (read once per walk), their normalized texts, and the other
        candidates than the generated one by first character."""
        cached = self._pieces.get((i, keep_case))
        if cached is None:
            if i not in self._candidates:
                self._candidates[i] = self.path.candidates(i)
            pairs, at = self._candidates[i]
            fold = _fold_word if i == self.s else _fold
            pieces = [fold(token, keep_case) for token, _ in pairs]
            by_first: dict[str, list[int]] = {}
            for k, piece in enumerate(pieces):
                if piece and k != at:
                    by_first.setdefault(piece[0], []).append(k)
            cached = self._pieces[(i, keep_case)] = (pairs, at, pieces, by_first)
        return cached

    def floor(self, i: int) -> float:
        if i not in self._candidates:
            self._candidates[i] = self.path.candidates(i)
        if i not in self._floors:
            self._floors[i] = self.path.floor(i, self._candidates[i])
        return self._floors[i]

    def consumed(self, upto: int, keep_case: bool) -> str:
        return "".join(self.piece(self.path.tokens[i], i, keep_case) for i in range(self.s, upto))

    def run(self) -> tuple[tuple[float, ...], tuple[bool, ...]]:
        letters = self._run_letters()
        if letters is not None:
            return letters
        n_opt = len(self.labels)
        masses: list[list[float]] = [[] for _ in range(n_opt)]
        truncated = [False] * n_opt
        claims: dict[tuple[int, int], list[tuple[int, float, bool]]] = {}
        for j in range(n_opt):
            self._walk_option(j, masses, truncated, claims)
        for entries in claims.values():
            if len(entries) == 1:  # one option's alone (the usual case): log(1) is 0.0
                j, lp, _ = entries[0]
                masses[j].append(lp - 0.0)
                continue
            # A candidate that completes an option is that option's, not a continuation of a
            # longer one (" A" is option "A", not the start of "All of the above").
            complete = [e for e in entries if e[2]]
            shared = complete or entries
            share = math.log(len(shared))
            for j, lp, _ in shared:
                masses[j].append(lp - share)
                if len(shared) > 1:
                    truncated[j] = True
        out = []
        for j in range(n_opt):
            if not masses[j]:
                masses[j].append(self.floor(self.s))
                truncated[j] = True
            out.append(_lse(masses[j]))
        return tuple(out), tuple(truncated)

    def _run_letters(self) -> tuple[tuple[float, ...], tuple[bool, ...]] | None:
        """`run` when every option is one distinct character (A/B/C/D): the walk ends at the
        answer position, each listed candidate there is one option's (or none's), and no option
        continues another. The same arithmetic as the general walk, step for step (so the same
        values), without its bookkeeping; None when the options are not such letters."""
        labels = self.labels
        texts = [label.text for label in labels]
        if not all(label.keep_case and len(label.text) == 1 for label in labels) or len(
            set(texts)
        ) != len(texts):
            return None
        s = self.s
        pairs, _, pieces, by_first = self.candidates(s, True)
        lp_s = self.path.logprobs[s]
        generated = _fold_word(self.path.tokens[s], True)
        generated_text = _rstrip(generated) if generated else None
        masses: list[list[float]] = []
        truncated: list[bool] = []
        for j, target in enumerate(texts):
            # Listed candidates other than the generated one that write this option (claims).
            claimed = [
                (0.0 + pairs[k][1]) - 0.0
                for k in by_first.get(target, ())
                if _rstrip(pieces[k]) == target
            ]
            if lp_s is None:
                mass, cut = [0.0], True
            elif generated_text == target:
                mass, cut = [0.0 + lp_s + 0.0], False
            elif j == self.answer:
                return None  # (the answer position always completes the answer)
            elif not claimed:
                mass, cut = [0.0 + self.floor(s)], True
            else:
                mass, cut = [], False
            mass.extend(claimed)
            masses.append(mass)
            truncated.append(cut)
        return tuple(_lse(mass) for mass in masses), tuple(truncated)

    def _walk_option(
        self,
        j: int,
        masses: list[list[float]],
        truncated: list[bool],
        claims: dict[tuple[int, int], list[tuple[int, float, bool]]],
    ) -> None:
        label = self.labels[j]
        target, keep_case = label.text, label.keep_case
        if not target:
            return  # nothing to read: floored in run()
        path = self.path
        tokens, logprobs, n_tokens = path.tokens, path.logprobs, len(path.tokens)
        consumed, prefix, i = "", 0.0, self.s
        while True:
            if i >= n_tokens:
                # The generation stopped while this option still agreed: its departure is unseen.
                masses[j].append(prefix)
                truncated[j] = True
                return
            pairs, _, pieces, by_first = self.candidates(i, keep_case)
            claimed = False
            longest_other = 0  # the longest listed candidate other than the generated one
            for k in by_first.get(target[len(consumed)], ()):
                piece = pieces[k]
                joined = consumed + piece
                if target.startswith(joined) or (
                    joined.startswith(target) and _rstrip(joined) == target  # "Lima,"
                ):
                    # Every listed token that spells the option on is a disjoint way of
                    # writing it: completions count whole, continuations as if certain after.
                    done = len(_rstrip(joined)) >= len(target)
                    claims.setdefault((i, k), []).append((j, prefix + pairs[k][1], done))
                    claimed = True
                    if not done:
                        longest_other = max(longest_other, len(piece))
            lp_i = logprobs[i]
            if lp_i is None:  # a generated token without a logprob: nothing more to read
                masses[j].append(prefix)
                truncated[j] = True
                return
            piece = (_fold_word if i == self.s else _fold)(tokens[i], keep_case)
            joined = consumed + piece
            if piece and _rstrip(joined) == target:
                masses[j].append(prefix + lp_i + self._rest(i + 1, j))
                return
            longest = len(piece) >= longest_other
            follows = j == self.answer or (bool(piece) and target.startswith(joined) and longest)
            if follows:
                consumed, prefix, i = joined, prefix + lp_i, i + 1
                continue
            if not claimed:
                masses[j].append(prefix + self.floor(i))
                truncated[j] = True
            return

    def _rest(self, i: int, j: int) -> float:
        """log P(not continuing into a longer option | option j was written up to token i)."""
        if i >= len(self.path):
            return 0.0
        done = self.labels[j]
        longer = []
        for k, label in enumerate(self.labels):
            if k == j or len(label.text) <= len(done.text):
                continue
            consumed = self.consumed(i, label.keep_case)
            if label.text.startswith(_rstrip(consumed)):
                longer.append((label, consumed))
        if not longer:
            return 0.0
        pairs, _ = self.path.candidates(i)
        total = 0.0
        for token, lp in pairs:
            for label, consumed in longer:
                joined = consumed + _fold(token, label.keep_case)
                if len(joined) > len(consumed) and (
                    label.text.startswith(joined) or _rstrip(joined) == label.text
                ):
                    total += math.exp(lp)
                    break
        if total <= 0.0:
            return 0.0
        return math.log(max(1.0 - total, _SHARE_FLOOR))


def _likelihood_logprobs(
    labels: tuple[_Label, ...], likelihoods: Sequence[float]
) -> tuple[float, ...]:
    """Sequence log-likelihoods, each less the mass of the longer options its text starts."""
    out = []
    for j, label in enumerate(labels):
        lp = float(likelihoods[j])
        longer = [
            float(likelihoods[k])
            for k, other in enumerate(labels)
            if k != j
            and label.text
            and len(other.text) > len(label.text)
            and _fold(other.text, False).startswith(_fold(label.text, False))
            and not _word_joined(label.text[-1], other.text[len(label.text)])
        ]
        if longer and lp > -math.inf:
            rest = 1.0 - sum(math.exp(v - lp) for v in longer)
            if rest > 0.0:  # else the longer text was tokenized apart: nothing to take out
                lp += math.log(rest)
        out.append(lp)
    return tuple(out)


#: vLLM writes a masked token's logprob (-inf: a token guided decoding forbids) as -9999.0 in
#: JSON. An option whose only evidence is such a token has probability 0, not e^-9999: kept as a
#: number, one labeled item naming it would drive a temperature fit to its upper bound (its NLL
#: 9999 / T dominates every other item's).
MASKED_LOGPROB = -9000.0


def score_options(
    logprobs: Any, options: Sequence[str], *, likelihoods: Sequence[float] | None = None
) -> OptionScore:
    """Find the option the generated answer names and the distribution over ``options``.

    See the module docstring for the matching rule and the two scorings. ``likelihoods`` (one
    full-sequence log-likelihood per option, in order) switches to exact-likelihood scoring.
    Never raises on missing or empty logprobs: the result then has ``answer=None``.
    """
    opts = tuple(options)
    none = OptionScore(opts, (), (), None, None, None)
    if likelihoods is not None and len(likelihoods) != len(opts):
        raise ValueError("likelihoods must have one value per option")
    labels = _labels(opts)
    kind, steps = _steps(logprobs)
    if kind == "none" or not any(label.text for label in labels):
        return none
    path = _Path(kind, steps)
    match = _match(path.tokens, labels)
    if match is None:
        return none
    i = match.index
    if likelihoods is not None:
        scores = _likelihood_logprobs(labels, likelihoods)
        return OptionScore(
            opts, scores, (False,) * len(opts), opts[i], i, match.position, "likelihood"
        )
    scores, truncated = _Walk(path, match.position, labels, i).run()
    scores = tuple(-math.inf if lp <= MASKED_LOGPROB else lp for lp in scores)
    return OptionScore(opts, scores, truncated, opts[i], i, match.position)


# --------------------------------------------------------------------------------------------
# Sequences


def score_sequence(logprobs: Any) -> SequenceScore:
    """Mean, min and sum of the token logprobs over all generated tokens (tokens without a
    logprob skipped), the first one's logprob and the top-2 margin at the first position."""
    kind, steps = _steps(logprobs)
    first_top: dict[str, float] | None = None
    first_token = ""
    if kind == "chat":
        lps = [e["logprob"] for e in steps if e.get("logprob") is not None]
        first = next((e for e in steps if e.get("logprob") is not None), None)
        if first is not None and first.get("top_logprobs"):
            first_token = first.get("token") or ""
            first_top = {
                c.get("token") or "": c["logprob"]
                for c in first["top_logprobs"]
                if isinstance(c, dict) and c.get("logprob") is not None
            }
    elif kind == "legacy":
        raw = list(steps.get("token_logprobs") or ())
        lps = [lp for lp in raw if lp is not None]
        at = next((i for i, lp in enumerate(raw) if lp is not None), None)
        tops = steps.get("top_logprobs") or ()
        tokens = steps.get("tokens") or ()
        if at is not None and at < len(tops) and isinstance(tops[at], dict):
            first_top = {t: lp for t, lp in tops[at].items() if lp is not None}
            first_token = tokens[at] if at < len(tokens) and isinstance(tokens[at], str) else ""
    else:
        lps = []
    if not lps:
        return SequenceScore(None, None, 0)
    return SequenceScore(
        sum(lps) / len(lps),
        min(lps),
        len(lps),
        first_logprob=lps[0],
        sum_logprob=sum(lps),
        first_margin=_margin(first_token, lps[0], first_top),
    )


def _margin(token: str, logprob: float, top: dict[str, float] | None) -> float | None:
    """``top1 - top2`` logprob at one position, over the listed candidates and the generated
    token (added when the list leaves it out). None with fewer than two."""
    if not top:
        return None
    values = sorted({**top, token: logprob}.values(), reverse=True)
    if len(values) < 2:
        return None
    return values[0] - values[1]
