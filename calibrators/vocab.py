"""The words of the calibration contract, defined once and imported everywhere.

Each vocabulary is a `Literal` type (for the type checker and pydantic) and the tuple of its
values (for run-time checks and error messages). The values are API contract (docs/api.md):
extend, never rename.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ABSTAIN_POLICIES",
    "ABSTAIN_REASONS",
    "METHODS",
    "MODES",
    "SCORINGS",
    "AbstainPolicy",
    "AbstainReason",
    "Method",
    "Mode",
    "Scoring",
]

#: How a response is scored: a multiple-choice answer over options, or free text.
Mode = Literal["options", "sequence"]
#: What happens to an answer below the threshold: reported, withheld (replaced), or never.
AbstainPolicy = Literal["annotate", "replace", "off"]
#: Why an answer abstained.
AbstainReason = Literal["idk_option", "below_threshold"]
#: The fitted calibrator of a profile.
Method = Literal["none", "temperature", "platt", "isotonic", "logistic"]
#: Options mode: where the option distribution comes from (generated path or exact likelihood).
Scoring = Literal["path", "likelihood"]

MODES: tuple[Mode, ...] = get_args(Mode)
ABSTAIN_POLICIES: tuple[AbstainPolicy, ...] = get_args(AbstainPolicy)
ABSTAIN_REASONS: tuple[AbstainReason, ...] = get_args(AbstainReason)
METHODS: tuple[Method, ...] = get_args(Method)
SCORINGS: tuple[Scoring, ...] = get_args(Scoring)
