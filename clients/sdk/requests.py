"""The gateway's endpoints as request descriptions, shared by the sync and async clients."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .errors import error_from_response


@dataclass(frozen=True)
class Call:
    """One HTTP call: method, path under the base URL, JSON body, query parameters."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None


def _calibration_field(
    options: list[str] | None,
    idk_option: str | None,
    mode: str | None,
    abstain: str | None,
    threshold: float | None,
    task: str | None,
) -> dict[str, Any] | None:
    values = {
        "options": options,
        "idk_option": idk_option,
        "mode": mode,
        "abstain": abstain,
        "threshold": threshold,
        "task": task,
    }
    present = {key: value for key, value in values.items() if value is not None}
    return present or None


def chat_call(
    model: str,
    messages: list[dict[str, Any]],
    *,
    stream: bool = False,
    options: list[str] | None = None,
    idk_option: str | None = None,
    mode: str | None = None,
    abstain: str | None = None,
    threshold: float | None = None,
    task: str | None = None,
    **params: Any,
) -> Call:
    body: dict[str, Any] = {"model": model, "messages": messages, **params}
    if stream:
        body["stream"] = True
    calibration = _calibration_field(options, idk_option, mode, abstain, threshold, task)
    if calibration:
        body["calibration"] = calibration
    return Call("POST", "/chat/completions", json=body)


def completion_call(
    model: str,
    prompt: str,
    *,
    options: list[str] | None = None,
    idk_option: str | None = None,
    mode: str | None = None,
    abstain: str | None = None,
    threshold: float | None = None,
    task: str | None = None,
    **params: Any,
) -> Call:
    body: dict[str, Any] = {"model": model, "prompt": prompt, **params}
    calibration = _calibration_field(options, idk_option, mode, abstain, threshold, task)
    if calibration:
        body["calibration"] = calibration
    return Call("POST", "/completions", json=body)


def feedback_item(id: str, correct: bool | None = None, label: str | None = None) -> dict[str, Any]:
    """One feedback item: exactly one of `correct` or `label`."""
    if (correct is None) == (label is None):
        raise ValueError("give exactly one of correct= or label=")
    return {"id": id, "correct": correct} if correct is not None else {"id": id, "label": label}


def feedback_call(items: list[dict[str, Any]] | dict[str, Any]) -> Call:
    return Call("POST", "/feedback", json=items)


def _model_path(model: str, suffix: str = "") -> str:
    return f"/calibration/models/{quote(model, safe='')}{suffix}"


def profile_call(model: str, task: str | None = None) -> Call:
    return Call("GET", _model_path(model), params={"task": task} if task else None)


def refit_call(model: str, task: str | None = None, wait: bool = True) -> Call:
    params: dict[str, Any] = {"wait": str(wait).lower()}
    if task:
        params["task"] = task
    return Call("POST", _model_path(model, "/refit"), params=params)


def reliability_call(model: str, task: str | None = None) -> Call:
    return Call("GET", _model_path(model, "/reliability"), params={"task": task} if task else None)


def prompt_optimization_call(model: str, **params: Any) -> Call:
    """Start a prompt-optimization job: `items` (or `from_feedback`), `task`, `budget`, ..."""
    return Call("POST", _model_path(model, "/prompt-optimizations"), json=params)


def prompt_optimization_status_call(job_id: str) -> Call:
    return Call("GET", f"/calibration/prompt-optimizations/{quote(job_id, safe='')}")


def prompt_optimization_resume_call(job_id: str) -> Call:
    return Call("POST", f"/calibration/prompt-optimizations/{quote(job_id, safe='')}/resume")


def decode(response: httpx.Response) -> Any:
    """The JSON body of a successful response, or raise the typed error for a failed one."""
    try:
        body = response.json()
    except json.JSONDecodeError:
        body = response.text
    if response.is_error:
        raise error_from_response(response.status_code, body)
    return body


DONE: Any = object()  # what `parse_sse_line` returns for the closing `data: [DONE]`


def parse_sse_line(line: str) -> Any:
    """One server-sent line: a chunk dict, `DONE`, or None for anything that is not data."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    return json.loads(data) if data else None


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Parse server-sent `data:` lines into chunk dicts, stopping at `[DONE]`."""
    for line in lines:
        chunk = parse_sse_line(line)
        if chunk is DONE:
            return
        if chunk is not None:
            yield chunk
