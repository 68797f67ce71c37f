"""From one upstream choice to the response's `calibration` object (docs/architecture.md,
"Confidence math").

All the math lives in `calibrators` (`score_options` / `score_sequence` → raw score,
`apply_profile` → calibrated confidence). This module only decides *which* score to take, turns
the result into the contract's field names, and takes the abstain decision:

1. the model picked the IDK option → `abstain_reason: "idk_option"`;
2. calibrated confidence below the threshold → `abstain_reason: "below_threshold"`;
3. policy `off` never abstains (the numbers are still reported).

Options mode, once a refit fitted the profile's conformal table: `prediction_set` (the options
whose calibrated probability passes the split-conformal quantile for the plan's `set_coverage`,
most probable first) and `set_coverage`; both are recorded in the prediction's features
(`set_indices`, `set_coverage`) for the guarantee monitor (service/guarantee_monitor.py).

When there is nothing to score (the engine returned no logprobs, the answer names no option, the
answer is empty), `confidence` is null and `reason` says why; the answer is returned as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

from calibrators import (
    AbstainReason,
    Method,
    Mode,
    OptionScore,
    Profile,
    Scoring,
    SequenceScore,
    apply_profile,
    prediction_set,
    score_options,
    score_sequence,
)
from service.proxy._plan import CalibrationPlan

__all__ = [
    "Outcome",
    "calibrate_choice",
    "choice_id",
    "choice_index",
    "echoed_count",
    "echoed_in_first_chunk",
    "generated_completion",
    "generated_text",
    "no_choice_outcome",
]

# Why `confidence` can be null (the `reason` field of the calibration object).
NO_LOGPROBS = "upstream_returned_no_logprobs"
NO_OPTION = "answer_names_no_option"
EMPTY_ANSWER = "empty_answer"
NO_CHOICES = "upstream_returned_no_choices"


@dataclass(slots=True)
class Outcome:
    """The calibration of one response: the public object plus what the store records."""

    mode: Mode
    task: str
    confidence: float | None
    raw_confidence: float | None
    method: Method
    temperature: float | None
    threshold: float | None
    abstained: bool
    abstain_reason: AbstainReason | None
    answer: str | None  # option label (options mode) or the answer text (sequence mode)
    option_probs: dict[str, float] | None
    profile_version: int
    reason: str | None = None
    features: dict[str, Any] = field(default_factory=dict)
    scoring: Scoring | None = None  # options mode: "path" or "likelihood" (what produced the probs)
    prediction_set: list[str] | None = None  # options mode, after a conformal fit
    set_coverage: float | None = None  # the target coverage of `prediction_set`
    # Public fields of optional features (the visual probe's `visual_reliance`, `visual_probe`).
    extras: dict[str, Any] = field(default_factory=dict)

    def public(self, calibration_id: str, *, withheld: bool = False) -> dict[str, Any]:
        """The `calibration` object of the response (field names are the API contract).

        `answer` is reported in options mode only (in sequence mode the answer *is* the content);
        when the answer was withheld (`replace`), neither it nor the option distribution is shown.
        """
        body: dict[str, Any] = {
            "id": calibration_id,
            "confidence": self.confidence,
            "raw_confidence": self.raw_confidence,
            "method": self.method,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "abstained": self.abstained,
            "abstain_reason": self.abstain_reason,
            "answer": None if withheld or self.mode != "options" else self.answer,
            "option_probs": None if withheld else self.option_probs,
            "profile_version": self.profile_version,
            "mode": self.mode,
            "task": self.task,
        }
        if self.reason is not None:
            body["reason"] = self.reason
        if self.scoring is not None:
            body["scoring"] = self.scoring
        if self.prediction_set is not None and not withheld:
            body["prediction_set"] = self.prediction_set
            body["set_coverage"] = self.set_coverage
        if withheld:
            body["withheld"] = True
        if self.extras:
            body.update(self.extras)
        return body


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@lru_cache(maxsize=16)
def _field_names(cls: Any) -> tuple[str, ...]:
    """A score dataclass's field names (`dataclasses.fields` rebuilds its tuple per call)."""
    return tuple(f.name for f in fields(cls))


def _features(score: Any, signals: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """What is recorded with the prediction: the score's fields, plus finite named signals."""
    out: dict[str, Any] = {}
    for name in _field_names(score.__class__):
        value = getattr(score, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    kept = {name: v for name, value in (signals or {}).items() if (v := _finite(value)) is not None}
    if kept:
        out["signals"] = kept
    return out


def _option_probs(options: tuple[str, ...] | None, probs: Any) -> dict[str, float] | None:
    if probs is None:
        return None
    if isinstance(probs, dict):
        return {str(k): float(v) for k, v in probs.items()}
    if options is None:
        return None
    values = list(probs)
    if len(values) != len(options):
        return None
    return {label: float(p) for label, p in zip(options, values, strict=True)}


def _empty(plan: CalibrationPlan, profile: Profile, reason: str) -> Outcome:
    return Outcome(
        mode=plan.mode,
        task=plan.task,
        confidence=None,
        raw_confidence=None,
        method=profile.method,
        temperature=None,
        threshold=plan.threshold if plan.threshold is not None else _finite(profile.threshold),
        abstained=False,
        abstain_reason=None,
        answer=None,
        option_probs=None,
        profile_version=profile.version,
        reason=reason,
    )


def no_choice_outcome(plan: CalibrationPlan, profile: Profile) -> Outcome:
    """The outcome of an upstream body with no choice to calibrate."""
    return _empty(plan, profile, NO_CHOICES)


def calibrate_choice(
    logprobs: Any,
    text: str | None,
    plan: CalibrationPlan,
    profile: Profile,
    model: str,
    likelihoods: Sequence[float] | None = None,
    signals: Mapping[str, float | None] | None = None,
) -> Outcome:
    """Score one choice's logprobs, calibrate with `profile`, decide abstention.

    `likelihoods` (options mode, `scoring: "likelihood"`): each option's log-likelihood after the
    prompt (`_likelihood.py`); the generated text still decides the answer.
    `signals`: named per-answer signals beyond the score (e.g. visual reliance) for a
    multi-feature (logistic) profile; recorded under `features["signals"]` so refits can use them.
    """
    # A profile fitted for the other mode cannot calibrate this score: fall back to identity.
    if profile.mode != plan.mode and profile.method != "none":
        profile = Profile.identity(model, plan.task)

    if not logprobs:
        return _empty(plan, profile, NO_LOGPROBS)

    score: OptionScore | SequenceScore
    if plan.mode == "options":
        score = score_options(logprobs, plan.options or (), likelihoods=likelihoods)
        if not score.found:
            outcome = _empty(plan, profile, NO_OPTION)
            outcome.features = _features(score)
            return outcome
    else:
        score = score_sequence(logprobs)
        if score.n_tokens == 0:
            return _empty(plan, profile, EMPTY_ANSWER)
        # The answer's own signals (first-token, min-token, joint probability, ...) for refits
        # that choose among them; signals the caller passed win on a name clash.
        signals = {**score.signals(), **(signals or {})}

    calibrated = apply_profile(profile, score, threshold=plan.threshold, signals=signals)
    confidence = _finite(calibrated.confidence)
    answer = calibrated.answer if plan.mode == "options" else (text or "").strip() or None

    abstained = False
    reason: AbstainReason | None = None
    if plan.abstain != "off":
        if plan.idk_option is not None and answer == plan.idk_option:
            abstained, reason = True, "idk_option"
        elif calibrated.below_threshold:
            abstained, reason = True, "below_threshold"

    option_probs = _option_probs(plan.options, calibrated.option_probs)
    features = _features(score, signals)
    labels = None
    table = profile.conformal_table
    if table is not None and option_probs and isinstance(score, OptionScore):
        labels = prediction_set(option_probs, table.quantile(plan.set_coverage))
        index = {option: i for i, option in enumerate(score.options)}
        features["set_indices"] = [index[label] for label in labels]
        features["set_coverage"] = plan.set_coverage

    return Outcome(
        mode=plan.mode,
        task=plan.task,
        confidence=confidence,
        raw_confidence=_finite(calibrated.raw_confidence),
        method=calibrated.method,
        temperature=_finite(calibrated.temperature),
        threshold=_finite(calibrated.threshold),
        abstained=abstained,
        abstain_reason=reason,
        answer=answer,
        option_probs=option_probs,
        profile_version=profile.version,
        features=features,
        scoring=score.scoring if isinstance(score, OptionScore) else None,
        prediction_set=labels,
        set_coverage=plan.set_coverage if labels is not None else None,
    )


# ---------------------------------------------- each choice: its id, only what was generated
# Each choice of a response, as the calibrators should see it: its own id, and only what the
# model generated.
#
# Every choice is scored and recorded on its own (`n > 1`, or a list of prompts on
# `/v1/completions`). Choice 0 keeps the response id as its calibration id (the top-level
# `calibration` stays choice 0's, as before); choice i > 0 gets `<response id>-<i>`.
#
# With `echo`, vLLM returns the prompt in front of the answer: in the text, and on
# `/v1/completions` also in the logprobs (one entry per prompt token). Scoring those would mix the
# prompt's likelihood into the answer's confidence, so they are cut off first.


def choice_id(response_id: str, index: int) -> str:
    """The calibration (feedback) id of choice `index`."""
    return response_id if index == 0 else f"{response_id}-{index}"


def choice_index(choice: dict[str, Any], position: int) -> int:
    """The choice's own `index`, else its position in the list."""
    index = choice.get("index")
    if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
        return index
    return position


def echoed_count(echoed: str | int | None) -> int | None:
    """The number of echoed prompt tokens when the prompt was token ids (else unknown)."""
    return echoed if isinstance(echoed, int) and not isinstance(echoed, bool) else None


def echoed_in_first_chunk(echoed: str | int | None, text: Any, tokens: Any) -> int | None:
    """How many of the tokens of a choice's first streamed chunk are the echoed prompt.

    That chunk holds the prompt and the first answer tokens (usually one). A token-id prompt
    gives the count; for a text prompt, the answer's part of the chunk text (after the prompt)
    is matched by tokens from the end. None: no logprobs to split.
    """
    count = echoed_count(echoed)
    if count is not None:
        return count
    if not isinstance(tokens, list) or not tokens:
        return None
    answered = 1
    if isinstance(echoed, str) and isinstance(text, str) and text.startswith(echoed):
        answer = len(text) - len(echoed)
        answered, length = 0, 0
        while answered < len(tokens) and length < answer:
            token = tokens[-1 - answered]
            length += len(token) if isinstance(token, str) else 0
            answered += 1
        answered = max(answered, 1)
    return max(len(tokens) - answered, 0)


def generated_text(text: Any, echoed: str | int | None) -> str | None:
    """The choice's text without the echoed prompt."""
    if not isinstance(text, str):
        return None
    if isinstance(echoed, str) and echoed and text.startswith(echoed):
        return text[len(echoed) :]
    return text


def generated_completion(
    logprobs: Any, text: Any, n_prompt: int | None, echoed: str | int | None
) -> tuple[Any, str | None]:
    """(logprobs, text) of a `/v1/completions` choice without its first `n_prompt` (echoed)
    tokens. `n_prompt` None: no echo, or the number is unknown (everything is scored)."""
    if not n_prompt:
        return logprobs, generated_text(text, echoed)
    tokens: Any = None
    if isinstance(logprobs, dict):
        tokens = logprobs.get("tokens")
        logprobs = {
            key: value[n_prompt:] if isinstance(value, list) else value
            for key, value in logprobs.items()
        }
    out = generated_text(text, echoed)
    if out is not None and not isinstance(echoed, str) and isinstance(tokens, list):
        # The prompt's text is unknown (token ids): the answer is its tokens' text.
        out = "".join(t for t in tokens[n_prompt:] if isinstance(t, str))
    return logprobs, out
