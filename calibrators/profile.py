"""The per-(model, task) calibration state, and applying it to one response's raw score.

A :class:`Profile` is a plain value: everything in it is JSON (the fitted calibrator is stored
as its ``to_dict()``), so the service can keep versions in a database and roll back. The
calibrator object is rebuilt once per profile instance and cached; :func:`apply_profile` is
then a few microseconds per request.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .conformal import ConformalTable
from .isotonic import IsotonicCalibrator
from .logistic import CONFIDENCE_LOGIT, FeatureLogistic
from .platt import PlattScaler
from .scoring import OptionScore, SequenceScore, _softmax
from .temperature import TemperatureScaler
from .vocab import ABSTAIN_POLICIES, METHODS, MODES, AbstainPolicy, Method, Mode

__all__ = ["Calibrated", "Profile", "apply_profile"]

FittedCalibrator = TemperatureScaler | PlattScaler | IsotonicCalibrator | FeatureLogistic

_CALIBRATOR_TYPES: dict[
    str,
    type[TemperatureScaler] | type[PlattScaler] | type[IsotonicCalibrator] | type[FeatureLogistic],
] = {
    "temperature": TemperatureScaler,
    "platt": PlattScaler,
    "isotonic": IsotonicCalibrator,
    "logistic": FeatureLogistic,
}


@dataclass
class Profile:
    """How to turn raw scores into calibrated confidence and abstentions for one model/task.

    Treat an instance as immutable once in use (make changes with ``dataclasses.replace``);
    reassigning ``method`` or ``calibrator`` does drop the cached calibrator.
    """

    model: str
    task: str = "default"
    version: int = 0
    mode: Mode = "options"
    method: Method = "none"
    calibrator: dict[str, Any] | None = None
    threshold: float | None = None
    threshold_choice: dict[str, Any] | None = None
    system_prompt: str | None = None
    options: list[str] | None = None
    idk_option: str | None = None
    abstain: AbstainPolicy = "annotate"
    metrics: dict[str, Any] = field(default_factory=dict)
    fitted_at: str | None = None
    n_labels: int = 0
    notes: str | None = None
    #: Options mode: the split-conformal score table (`ConformalTable.to_dict()`), fitted at
    #: refit time on the held-out part; None until a refit fitted it (no prediction sets).
    conformal: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.abstain not in ABSTAIN_POLICIES:
            raise ValueError(f"abstain must be one of {ABSTAIN_POLICIES}, got {self.abstain!r}")
        if self.method != "none" and self.calibrator is None:
            raise ValueError(f"method {self.method!r} needs a fitted calibrator dict")
        kind = (self.calibrator or {}).get("type")
        if self.method != "none" and kind is not None and kind != self.method:
            raise ValueError(f"method {self.method!r} does not match calibrator type {kind!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("method", "calibrator"):
            self.__dict__.pop("fitted_calibrator", None)
        if name == "conformal":
            self.__dict__.pop("conformal_table", None)
        super().__setattr__(name, value)

    @classmethod
    def identity(cls, model: str, task: str = "default") -> Profile:
        """The profile before any feedback: raw confidence (T = 1), no threshold."""
        return cls(model=model, task=task, version=0, method="none")

    @cached_property
    def fitted_calibrator(self) -> FittedCalibrator | None:
        """The calibrator rebuilt from ``calibrator`` (None for method "none"); cached."""
        if self.method == "none" or self.calibrator is None:
            return None
        return _CALIBRATOR_TYPES[self.method].from_dict(self.calibrator)

    @cached_property
    def conformal_table(self) -> ConformalTable | None:
        """The conformal table rebuilt from ``conformal`` (None before a refit fitted it)."""
        return None if self.conformal is None else ConformalTable.from_dict(self.conformal)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (a deep copy)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Rebuild from :meth:`to_dict` output; unknown keys (from newer versions) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Calibrated:
    """A response's calibrated confidence and what produced it.

    ``confidence`` is None when no answer (option) was found or there were no logprobs;
    ``below_threshold`` is then False: that case is for the caller to name, not a low score.
    """

    confidence: float | None
    raw_confidence: float | None
    method: Method
    temperature: float | None
    threshold: float | None
    option_probs: dict[str, float] | None
    answer: str | None
    below_threshold: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_profile(
    profile: Profile,
    score: OptionScore | SequenceScore,
    *,
    threshold: float | None = None,
    signals: Mapping[str, float | None] | None = None,
) -> Calibrated:
    """Calibrate one raw score with ``profile``; ``threshold`` overrides the profile's.

    * options + temperature: exact option-restricted temperature scaling of every option;
    * options + platt/isotonic/logistic: the chosen option's raw probability is mapped,
      ``option_probs`` stay the raw (T = 1) ones;
    * sequence + platt/isotonic/logistic: ``exp(mean logprob)`` is mapped;
    * logistic reads its features from ``signals`` (``{name: value}``; ``confidence_logit`` is
      computed here from the raw confidence); a missing signal takes its training mean;
    * sequence + temperature is not applicable: reported as method "none", confidence = raw.
    """
    limit = profile.threshold if threshold is None else threshold
    method: Method = profile.method
    calibrator = profile.fitted_calibrator

    temperature: float | None
    confidence: float
    raw: float | None
    option_probs: dict[str, float] | None
    if isinstance(score, OptionScore):
        if score.answer_index is None or not score.option_logprobs:
            temperature = (
                calibrator.temperature_ if isinstance(calibrator, TemperatureScaler) else None
            )
            return Calibrated(None, None, method, temperature, limit, None, None, False)
        raw_probs = _softmax(score.option_logprobs)
        raw = raw_probs[score.answer_index]
        if isinstance(calibrator, TemperatureScaler):
            temperature = fitted_t = calibrator.temperature_
            probs = _softmax(score.option_logprobs, fitted_t)
            confidence = probs[score.answer_index]
        else:
            temperature = 1.0 if calibrator is None else None
            probs = raw_probs
            confidence = raw if calibrator is None else _map_raw(calibrator, raw, signals)
        by_option: dict[str, float] = {}
        for option, p in zip(score.options, probs, strict=True):
            by_option.setdefault(option, p)
        option_probs = by_option
        answer = score.answer
    else:
        raw = score.raw_confidence
        temperature, option_probs, answer = None, None, None
        if raw is None:
            return Calibrated(None, None, method, None, limit, None, None, False)
        if isinstance(calibrator, PlattScaler | IsotonicCalibrator | FeatureLogistic):
            confidence = _map_raw(calibrator, raw, signals)
        else:
            method, confidence = "none", raw

    if math.isnan(confidence):
        confidence_out: float | None = None
    else:
        confidence_out = float(confidence)
    below = limit is not None and confidence_out is not None and confidence_out < limit
    return Calibrated(
        confidence=confidence_out,
        raw_confidence=float(raw),
        method=method,
        temperature=temperature,
        threshold=limit,
        option_probs=option_probs,
        answer=answer,
        below_threshold=below,
    )


def _map_raw(
    calibrator: PlattScaler | IsotonicCalibrator | FeatureLogistic,
    raw: float,
    signals: Mapping[str, float | None] | None,
) -> float:
    """A one-answer map of the raw confidence (plus, for logistic, the named signals)."""
    if isinstance(calibrator, FeatureLogistic):
        values: dict[str, float | None] = dict(signals or {})
        p = min(max(raw, 1e-6), 1.0 - 1e-6)
        values[CONFIDENCE_LOGIT] = math.log(p) - math.log1p(-p)
        return calibrator.predict_row(values)
    return calibrator._predict_scalar(raw)
