"""Server-sent events through the gateway (`stream: true`).

Every upstream event is forwarded as soon as it arrives — nothing waits for the whole answer —
while choice 0's logprobs and text accumulate on the side. When the upstream says `[DONE]`, one
extra chunk carrying `calibration` (same `id`/`object`/`created`/`model`, empty `choices`) is sent
just before our own `data: [DONE]`.

Streaming can only *annotate*: by the time we know the confidence, the answer has been sent, so a
`replace` policy degrades to `annotate` (the final chunk reports `abstained`, nothing is withheld).

If the upstream connection breaks mid-stream (timeout, reset, truncated body), the client gets
one OpenAI-shaped error event (`data: {"error": {...}}`, which the OpenAI SDK raises as an
`APIError`) and no `[DONE]`; nothing is recorded for that response.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from service.calibration_request import CalibrationPlan
from service.confidence import Outcome, calibrate_choice
from service.errors import APIError
from service.option_likelihood import option_likelihoods_result
from service.request_body import LogprobWish
from service.shaping import trim_chat_choice, trim_completion_choice
from service.upstream import UpstreamResponse, UpstreamTransportError, upstream_error_from

__all__ = ["StreamContext", "relay"]

logger = logging.getLogger(__name__)

_DONE = b"data: [DONE]\n\n"


def _dumps(obj: Any) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate from an upstream escape: keep it escaped
        return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(slots=True)
class StreamContext:
    """What the relay needs to know about the request it serves."""

    legacy: bool  # /v1/completions (text + token_logprobs) rather than chat
    wish: LogprobWish
    plan: CalibrationPlan
    profile: Any
    model: str  # the name the client used
    rename: bool  # the upstream knows the model under another name
    # Called once at the end: (response id, outcome or None if the stream broke, seconds spent
    # waiting on the upstream, the upstream error if any). Records the prediction and metrics.
    on_done: Callable[[str, Outcome | None, float, APIError | None], None]
    likelihoods: Any = None  # scoring "likelihood": the task scoring the options (or None)
    _content: list[Any] = field(default_factory=list)
    _tokens: list[Any] = field(default_factory=list)
    _token_lps: list[Any] = field(default_factory=list)
    _tops: list[Any] = field(default_factory=list)
    _text: list[str] = field(default_factory=list)
    _saw_logprobs: bool = False

    def absorb(self, choice: dict[str, Any]) -> None:
        """Accumulate choice 0's text and logprobs from one chunk."""
        if self.legacy:
            text = choice.get("text")
        else:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(text, str):
            self._text.append(text)
        logprobs = choice.get("logprobs")
        if not isinstance(logprobs, dict):
            return
        if self.legacy:
            self._saw_logprobs = True
            self._tokens.extend(logprobs.get("tokens") or ())
            self._token_lps.extend(logprobs.get("token_logprobs") or ())
            self._tops.extend(logprobs.get("top_logprobs") or ())
        else:
            content = logprobs.get("content")
            if content:
                self._saw_logprobs = True
                self._content.extend(content)

    def logprobs(self) -> Any:
        if not self._saw_logprobs:
            return None
        if self.legacy:
            return {
                "tokens": self._tokens,
                "token_logprobs": self._token_lps,
                "top_logprobs": self._tops,
            }
        return {"content": self._content}

    def text(self) -> str:
        return "".join(self._text)


async def relay(
    response: UpstreamResponse, ctx: StreamContext, upstream_s: float = 0.0
) -> AsyncIterator[bytes]:
    """Forward the upstream SSE stream, then the calibration chunk and `[DONE]`.

    `upstream_s` is the time already spent waiting for the upstream's response headers; the
    waits for each next line are added to it.
    """
    trim = trim_completion_choice if ctx.legacy else trim_chat_choice
    meta: dict[str, Any] | None = None
    lines = response.aiter_lines()
    clock = time.perf_counter
    try:
        while True:
            t0 = clock()
            try:
                line = await anext(lines)
            except StopAsyncIteration:
                break
            finally:
                upstream_s += clock() - t0
            if not line.startswith("data:"):
                # Blank separators are re-created below; SSE comments/keep-alives pass through.
                if line.startswith(":"):
                    yield line.encode() + b"\n\n"
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                yield line.encode() + b"\n\n"
                continue
            if not isinstance(chunk, dict) or "error" in chunk:
                yield line.encode() + b"\n\n"
                continue
            if meta is None:
                meta = {
                    "id": chunk.get("id") or f"calib-{uuid.uuid4().hex}",
                    "object": chunk.get("object")
                    or ("text_completion" if ctx.legacy else "chat.completion.chunk"),
                    "created": chunk.get("created") or int(time.time()),
                    "model": ctx.model,
                }
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict):
                    if choice.get("index", 0) == 0:
                        ctx.absorb(choice)
                    trim(choice, ctx.wish)
            if ctx.rename:
                chunk["model"] = ctx.model
            yield b"data: " + _dumps(chunk) + b"\n\n"
    except UpstreamTransportError as exc:
        if ctx.likelihoods is not None:
            ctx.likelihoods.cancel()
        error = upstream_error_from(exc)
        error.code = "upstream_stream_dropped"
        logger.warning("upstream stream broke: %s", error.message)
        ctx.on_done(meta["id"] if meta else "", None, upstream_s, error)
        yield (
            b"data: "
            + _dumps(
                {
                    "error": {
                        "message": f"{error.message} (the stream was interrupted)",
                        "type": error.type,
                        "param": None,
                        "code": error.code,
                    }
                }
            )
            + b"\n\n"
        )
        return
    finally:
        await response.aclose()

    if meta is None:
        meta = {
            "id": f"calib-{uuid.uuid4().hex}",
            "object": "text_completion" if ctx.legacy else "chat.completion.chunk",
            "created": int(time.time()),
            "model": ctx.model,
        }
    plan = ctx.plan
    if plan.abstain == "replace":
        plan = replace(plan, abstain="annotate")
    option_lps = await option_likelihoods_result(ctx.likelihoods)
    outcome = calibrate_choice(
        ctx.logprobs(), ctx.text(), plan, ctx.profile, ctx.model, likelihoods=option_lps
    )
    ctx.on_done(meta["id"], outcome, upstream_s, None)
    final = {**meta, "choices": [], "calibration": outcome.public(meta["id"])}
    yield b"data: " + _dumps(final) + b"\n\n" + _DONE
