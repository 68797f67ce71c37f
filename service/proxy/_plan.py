"""The request's optional `calibration` object, validated, and the plan it resolves to.

Clients may send `calibration: {options?, idk_option?, mode?, abstain?, threshold?, task?,
add_idk_option?, idk_text?, scoring?, visual_probe?}` next to the usual OpenAI fields. It is
removed from the body before the body goes upstream (vLLM would reject an unknown field only in
strict mode, but it has no business there).

`resolve_plan` merges, field by field, request > active profile > model configuration:
what the caller asks for this request wins, then what was fitted for (model, task), then the
operator's static configuration.

`add_idk_option` (request, else the model's configuration) makes the gateway add an "I don't
know" choice to the options and show it to the model (`_idk.py`, docs/idk.md).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from calibrators import ABSTAIN_POLICIES, MODES, SCORINGS, AbstainPolicy, Mode, Profile, Scoring
from service.errors import APIError
from service.proxy._idk import choose_label
from service.settings import ModelConfig, Perturbation

__all__ = ["CalibrationPlan", "CalibrationRequest", "parse_calibration", "resolve_plan"]

_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_KEYS = {
    "options",
    "idk_option",
    "mode",
    "abstain",
    "threshold",
    "task",
    "add_idk_option",
    "idk_text",
    "scoring",
    "visual_probe",
    "set_coverage",
}
_PERTURBATIONS: tuple[Perturbation, ...] = ("blank", "noise", "blur")


@dataclass(frozen=True, slots=True)
class CalibrationRequest:
    """What the client asked for in `calibration` (None = not given)."""

    options: tuple[str, ...] | None = None
    idk_option: str | None = None
    mode: Mode | None = None
    abstain: AbstainPolicy | None = None
    threshold: float | None = None
    task: str = "default"
    add_idk_option: bool | None = None
    idk_text: str | None = None
    scoring: Scoring | None = None
    # True/False: probe or not (overrides the model's `visual_probe`); a name: probe with it.
    visual_probe: bool | Perturbation | None = None
    set_coverage: float | None = None


@dataclass(frozen=True, slots=True)
class CalibrationPlan:
    """How this one response will be scored, calibrated and possibly withheld."""

    mode: Mode
    options: tuple[str, ...] | None
    idk_option: str | None
    abstain: AbstainPolicy
    threshold: float | None  # request override; None = the profile's
    task: str
    idk_message: str
    idk_added: bool = False  # the gateway added `idk_option` to the options: show it upstream
    idk_text: str | None = None  # how the added choice reads ("I don't know")
    scoring: Scoring = (
        "path"  # options mode: "likelihood" scores each option after the prompt (_likelihood.py)
    )
    visual_probe: Perturbation | None = None  # probe this answer with this perturbation
    set_coverage: float = 0.9  # options mode: target coverage of the prediction set


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=f"calibration.{param}" if param else "calibration")


def parse_calibration(raw: Any) -> CalibrationRequest:
    """Validate the `calibration` object of a request body (400 on any problem)."""
    if raw is None:
        return CalibrationRequest()
    if not isinstance(raw, dict):
        raise _bad("`calibration` must be an object.", "")
    unknown = set(raw) - _KEYS
    if unknown:
        raise _bad(
            f"Unknown field(s) in `calibration`: {', '.join(sorted(unknown))}. "
            f"Allowed: {', '.join(sorted(_KEYS))}.",
            sorted(unknown)[0],
        )

    options = raw.get("options")
    if options is not None:
        if (
            not isinstance(options, list)
            or not 2 <= len(options) <= 64
            or not all(isinstance(o, str) and o.strip() for o in options)
        ):
            raise _bad("`options` must be a list of 2 to 64 non-empty strings.", "options")
        if len(set(options)) != len(options):
            raise _bad("`options` must not repeat a label.", "options")
        options = tuple(options)

    idk = raw.get("idk_option")
    if idk is not None:
        if not isinstance(idk, str) or not idk.strip():
            raise _bad("`idk_option` must be a non-empty string.", "idk_option")
        if options is not None and idk not in options:
            raise _bad("`idk_option` must be one of `options`.", "idk_option")

    mode = raw.get("mode")
    if mode is not None and mode not in MODES:
        raise _bad("`mode` must be 'options' or 'sequence'.", "mode")

    abstain = raw.get("abstain")
    if abstain is not None and abstain not in ABSTAIN_POLICIES:
        raise _bad("`abstain` must be 'annotate', 'replace' or 'off'.", "abstain")

    threshold = raw.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise _bad("`threshold` must be a number between 0 and 1.", "threshold")
        if not 0.0 <= float(threshold) <= 1.0:
            raise _bad("`threshold` must be between 0 and 1.", "threshold")
        threshold = float(threshold)

    task = raw.get("task", "default")
    if task is None:
        task = "default"
    if not isinstance(task, str) or not _TASK_RE.match(task):
        raise _bad(
            "`task` must be a short name (letters, digits, '_', '-', '.'; at most 64).", "task"
        )

    add_idk = raw.get("add_idk_option")
    if add_idk is not None and not isinstance(add_idk, bool):
        raise _bad("`add_idk_option` must be true or false.", "add_idk_option")
    idk_text = raw.get("idk_text")
    if idk_text is not None and (
        not isinstance(idk_text, str) or not idk_text.strip() or len(idk_text) > 200
    ):
        raise _bad("`idk_text` must be a non-empty string of at most 200 characters.", "idk_text")

    scoring = raw.get("scoring")
    if scoring is not None and scoring not in SCORINGS:
        raise _bad("`scoring` must be 'path' or 'likelihood'.", "scoring")

    probe = raw.get("visual_probe")
    if probe is not None and not isinstance(probe, bool) and probe not in _PERTURBATIONS:
        raise _bad(
            "`visual_probe` must be true, false, or a perturbation: 'blank', 'noise' or 'blur'.",
            "visual_probe",
        )
    set_coverage = raw.get("set_coverage")
    if set_coverage is not None:
        if (
            isinstance(set_coverage, bool)
            or not isinstance(set_coverage, int | float)
            or not 0.0 < float(set_coverage) < 1.0
        ):
            raise _bad(
                "`set_coverage` must be a number strictly between 0 and 1 (e.g. 0.9).",
                "set_coverage",
            )
        set_coverage = float(set_coverage)

    return CalibrationRequest(
        options=options,
        idk_option=idk,
        mode=mode,
        abstain=abstain,
        threshold=threshold,
        task=task,
        add_idk_option=add_idk,
        idk_text=idk_text.strip() if idk_text else None,
        scoring=scoring,
        visual_probe=probe,
        set_coverage=set_coverage,
    )


def _visual_probe(request: CalibrationRequest, config: ModelConfig) -> Perturbation | None:
    """The perturbation this request is probed with: the request decides (true/false/a name);
    else the model's `visual_probe` (enabled, then sampled at `sample_rate`)."""
    wanted = request.visual_probe
    probe = config.visual_probe
    if wanted is False:
        return None
    if wanted is True:
        return probe.perturbation
    if wanted is not None:
        return wanted
    if not probe.enabled or probe.sample_rate <= 0.0:
        return None
    if probe.sample_rate < 1.0 and random.random() >= probe.sample_rate:
        return None
    return probe.perturbation


def resolve_plan(
    request: CalibrationRequest, profile: Profile, config: ModelConfig
) -> CalibrationPlan:
    """Merge request > profile > model config into the plan for this response."""
    options = request.options
    idk = request.idk_option
    if options is None:
        if profile.options:
            options = tuple(profile.options)
            idk = idk or profile.idk_option
        elif config.options:
            options = tuple(config.options)
            idk = idk or config.idk_option
    if idk is not None and options is not None and idk not in options:
        raise _bad("`idk_option` must be one of the options in effect.", "idk_option")

    mode = request.mode or config.mode or ("options" if options else "sequence")
    if mode == "options" and not options:
        raise _bad(
            "Options mode needs `calibration.options` (no default options are configured).",
            "options",
        )

    # The identity profile (version 0) carries the dataclass default policy, not a decision:
    # only a stored profile's policy outranks the model configuration.
    profile_policy = profile.abstain if profile.version > 0 else None
    abstain = request.abstain or profile_policy or config.abstain

    idk_added, idk_text = False, None
    wants_idk = request.add_idk_option
    if wants_idk is None:
        wants_idk = config.add_idk_option
    if wants_idk and mode == "options" and options and idk is None:
        idk_text = request.idk_text or config.idk_text or "I don't know"
        idk = choose_label(options, idk_text, config.idk_label)
        if idk in options:
            raise _bad(
                f"The IDK option's label {idk!r} is already one of the options.", "add_idk_option"
            )
        options, idk_added = (*options, idk), True

    return CalibrationPlan(
        mode=mode,
        options=options if mode == "options" else None,
        idk_option=idk if mode == "options" else None,
        abstain=abstain,
        threshold=request.threshold,
        task=request.task,
        idk_message=config.idk_message,
        idk_added=idk_added and mode == "options",
        idk_text=idk_text,
        scoring=request.scoring or config.scoring,
        visual_probe=_visual_probe(request, config),
        set_coverage=(
            request.set_coverage if request.set_coverage is not None else config.set_coverage
        ),
    )
