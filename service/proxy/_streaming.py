"""Server-sent events through the gateway (`stream: true`).

Every upstream event is forwarded as soon as it arrives — nothing waits for the whole answer;
events that arrived together (one read from the upstream) go out in one write —
while each choice's logprobs and text accumulate on the side (by `index`: `n > 1` and lists of
prompts stream their choices interleaved). The chunk that finishes a choice (`finish_reason`
set) carries that choice's `calibration` in the choice object. The response's `calibration`
(choice 0's) rides on the last chunk before `data: [DONE]`: on the usage chunk when the client
asked for one (`stream_options.include_usage`: OpenAI puts usage last, and it stays last),
else on one extra chunk (same `id`/`object`/`created`/`model`, empty `choices`).

Streaming can only *annotate*: by the time we know the confidence, the answer has been sent, so a
`replace` policy degrades to `annotate` (the final chunk reports `abstained`, nothing is withheld).

`/v1/completions` with `echo` streams the prompt's tokens in front of the first answer tokens
of each choice; how many is read off that first chunk (`OpenAIServing.streamed_prompt_tokens`).

If the upstream connection breaks mid-stream (timeout, reset, truncated body), the client gets
one OpenAI-shaped error event (`data: {"error": {...}}`, which the OpenAI SDK raises as an
`APIError`) and no `[DONE]`; nothing is recorded for that response.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from calibrators import Profile
from service.errors import APIError
from service.proxy._body import LogprobWish, dumps, loads
from service.proxy._confidence import (
    Outcome,
    calibrate_choice,
    choice_id,
    choice_index,
    generated_completion,
)
from service.proxy._likelihood import option_likelihoods_result
from service.proxy._plan import CalibrationPlan
from service.proxy._serving import Echoed, LogprobAccumulator, OpenAIServing
from service.proxy._upstream import UpstreamResponse, UpstreamTransportError, upstream_error_from
from service.proxy._visual_probe import VisualProbe

__all__ = ["EventStreamResponse", "StreamContext", "relay"]

logger = logging.getLogger(__name__)

_DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class _Choice:
    """One choice's text and logprobs, accumulated over its chunks."""

    logprobs: LogprobAccumulator
    text: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None  # echoed prompt tokens in front
    outcome: Outcome | None = None


@dataclass(slots=True)
class StreamContext:
    """What the relay needs to know about the request it serves."""

    serving: OpenAIServing  # what differs between chat and completions chunks
    wish: LogprobWish
    plan: CalibrationPlan
    profile: Profile
    model: str  # the name the client used
    rename: bool  # the upstream knows the model under another name
    # Called once at the end: ([(calibration id, outcome) per choice, choice 0 first] or None if
    # the stream broke, seconds spent waiting on the upstream, the upstream error if any).
    # Records the predictions and metrics.
    on_done: Callable[[list[tuple[str, Outcome]] | None, float, APIError | None], None]
    n: int = 1  # choices per prompt
    echoed: tuple[Echoed, ...] | None = None  # what vLLM echoes (OpenAIServing.echoed)
    # scoring "likelihood": the task scoring the options (or None)
    likelihoods: asyncio.Task[list[float] | None] | None = None
    option_lps: list[float] | None = None  # its result, awaited before the first choice scores
    probe: VisualProbe | None = None  # the visual-reliance probe, settled before a choice scores
    _choices: dict[int, _Choice] = field(default_factory=dict)

    def _echoed(self, index: int) -> Echoed:
        if self.echoed is None:
            return None
        prompt = self.serving.prompt_of(index, self.n)
        return self.echoed[prompt] if prompt < len(self.echoed) else None

    def absorb(self, index: int, choice: dict[str, Any]) -> _Choice:
        """Accumulate one choice's text and logprobs from one chunk."""
        serving = self.serving
        text = serving.chunk_text(choice)
        acc = self._choices.get(index)
        if acc is None:
            acc = self._choices[index] = _Choice(serving.new_logprobs())
            if self.echoed is not None:
                acc.prompt_tokens = serving.streamed_prompt_tokens(
                    choice, self._echoed(index), text
                )
        if isinstance(text, str):
            acc.text.append(text)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            acc.logprobs.add(logprobs)
        return acc

    def calibrate(self, index: int, acc: _Choice) -> Outcome:
        """Score one finished choice (once)."""
        if acc.outcome is None:
            logprobs, text = generated_completion(
                acc.logprobs.logprobs(),
                "".join(acc.text),
                acc.prompt_tokens,
                self._echoed(index),
            )
            plan = self.plan
            if plan.abstain == "replace":
                plan = replace(plan, abstain="annotate")
            probed = (
                self.probe.result(index, logprobs, self.option_lps)
                if self.probe is not None
                else None
            )
            acc.outcome = calibrate_choice(
                logprobs,
                text,
                plan,
                self.profile,
                self.model,
                likelihoods=self.option_lps,
                signals=probed.signals if probed is not None else None,
            )
            if probed is not None:
                probed.record(acc.outcome)
        return acc.outcome

    def outcomes(self, response_id: str) -> list[tuple[str, Outcome]]:
        """Every choice's (calibration id, outcome), choice 0 first (scored if it never came)."""
        if 0 not in self._choices:
            self._choices[0] = _Choice(self.serving.new_logprobs())
        return [
            (choice_id(response_id, index), self.calibrate(index, self._choices[index]))
            for index in sorted(self._choices)
        ]


def _is_usage_chunk(chunk: dict[str, Any]) -> bool:
    """vLLM's (and OpenAI's) final usage chunk: no choices, a usage object."""
    return not chunk.get("choices") and isinstance(chunk.get("usage"), dict)


async def relay(
    response: UpstreamResponse, ctx: StreamContext, upstream_s: float = 0.0
) -> AsyncIterator[bytes]:
    """Forward the upstream SSE stream, then the calibration and `[DONE]`.

    `upstream_s` is the time already spent waiting for the upstream's response headers; the
    waits for each next line are added to it.
    """
    trim = ctx.serving.trim_choice
    meta: dict[str, Any] | None = None
    usage_chunk: dict[str, Any] | None = None  # held back to carry the calibration
    batches = response.aiter_line_batches()
    clock = time.perf_counter
    out: list[bytes] = []  # the events of one batch, written together
    try:
        done = False
        while not done:
            if out:
                yield b"".join(out)
                out.clear()
            t0 = clock()
            try:
                batch = await anext(batches)
            except StopAsyncIteration:
                break
            finally:
                upstream_s += clock() - t0
            for line in batch:
                if not line.startswith("data:"):
                    # Blank separators are re-created below; SSE comments/keep-alives pass through.
                    if line.startswith(":"):
                        out.append(line.encode() + b"\n\n")
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                try:
                    chunk = loads(payload)
                except ValueError:
                    out.append(line.encode() + b"\n\n")
                    continue
                if not isinstance(chunk, dict) or "error" in chunk:
                    out.append(line.encode() + b"\n\n")
                    continue
                if meta is None:
                    meta = {
                        "id": chunk.get("id") or f"calib-{uuid.uuid4().hex}",
                        "object": chunk.get("object") or ctx.serving.chunk_object,
                        "created": chunk.get("created") or int(time.time()),
                        "model": ctx.model,
                    }
                if ctx.rename:
                    chunk["model"] = ctx.model
                if _is_usage_chunk(chunk):
                    usage_chunk = chunk  # the last before [DONE]: the calibration rides on it
                    continue
                for position, choice in enumerate(chunk.get("choices") or ()):
                    if isinstance(choice, dict):
                        index = choice_index(choice, position)
                        acc = ctx.absorb(index, choice)
                        trim(choice, ctx.wish)
                        if choice.get("finish_reason") is not None:
                            if ctx.likelihoods is not None and ctx.option_lps is None:
                                if out:  # what arrived before is not held up by the scoring
                                    yield b"".join(out)
                                    out.clear()
                                ctx.option_lps = await option_likelihoods_result(ctx.likelihoods)
                            if ctx.probe is not None:
                                if out:  # nor by the visual probe
                                    yield b"".join(out)
                                    out.clear()
                                await ctx.probe.settle(index, "".join(acc.text))
                            outcome = ctx.calibrate(index, acc)
                            choice["calibration"] = outcome.public(choice_id(meta["id"], index))
                out.append(b"data: " + dumps(chunk) + b"\n\n")
    except UpstreamTransportError as exc:
        if ctx.likelihoods is not None:
            ctx.likelihoods.cancel()
        if ctx.probe is not None:
            ctx.probe.cancel()
        error = upstream_error_from(exc)
        error.code = "upstream_stream_dropped"
        logger.warning("upstream stream broke: %s", error.message)
        ctx.on_done(None, upstream_s, error)
        yield (
            b"".join(out)
            + b"data: "
            + dumps(
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
            "object": ctx.serving.chunk_object,
            "created": int(time.time()),
            "model": ctx.model,
        }
    ctx.option_lps = await option_likelihoods_result(ctx.likelihoods)
    if ctx.probe is not None:
        await ctx.probe.settle_rest()
    outcomes = ctx.outcomes(meta["id"])
    ctx.on_done(outcomes, upstream_s, None)
    final = usage_chunk if usage_chunk is not None else {**meta, "choices": []}
    final["calibration"] = outcomes[0][1].public(outcomes[0][0])
    out.append(b"data: " + dumps(final) + b"\n\n" + _DONE)
    yield b"".join(out)


class EventStreamResponse(StreamingResponse):
    """Starlette's `StreamingResponse`, with the client-disconnect watch in plain asyncio.

    Below ASGI spec 2.4 (uvicorn declares 2.3) Starlette streams in an anyio task group next to
    a task that waits for `http.disconnect` and cancels the stream when the client goes. The
    same here with one asyncio task and `Task.cancel`: the task group and its cancel scopes
    cost ~50 µs of CPU per streamed request (docs/performance.md §6). When the client
    disconnects, the stream is cancelled where it waits (the relay closes the upstream and
    records nothing) and the response ends quietly, as Starlette's does.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = scope.get("asgi", {}).get("spec_version", "2.0")
        if scope["type"] != "http" or tuple(map(int, spec.split("."))) >= (2, 4):
            await super().__call__(scope, receive, send)
            return
        current = asyncio.current_task()
        assert current is not None
        state = {"streaming": True, "disconnected": False}

        async def watch() -> None:
            try:
                await self.listen_for_disconnect(receive)
            except Exception:  # a broken receive: stream on, unwatched
                logger.exception("watching for the client's disconnect failed")
                return
            if state["streaming"]:
                state["disconnected"] = True
                current.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not state["disconnected"]:
                raise
            current.uncancel()
        finally:
            state["streaming"] = False
            watcher.cancel()
        if self.background is not None:
            await self.background()
