"""Exact option likelihoods (`calibration.scoring: "likelihood"`): one extra upstream request.

The path method reads the option distribution off the generated tokens' top-K; this asks the
engine for the probability of every option's full text after the prompt instead, as lm-eval's
loglikelihood does, with vLLM's `prompt_logprobs` (the prompt's own token logprobs):

* completions: one request whose `prompt` is the list ``[prompt + lead + option, ...]`` (lead: a
  space unless the prompt already ends with whitespace, the way a base model continues "A:");
* chat: the conversation with the option as the assistant's turn, `continue_final_message: true`,
  `add_generation_prompt: false`. vLLM's chat endpoint takes one conversation per request, so
  that is one request per option, all sent at once (the engine batches them).

Each asks for one generated token (it is thrown away). An option's log-likelihood is the sum of
the logprobs of the prompt's last tokens that spell the option (walked back from the end until
their decoded text is as long as the option; a leading space shares the option's first
token). The request is sent concurrently with the client's own request, so the added latency is
the scoring's, not a second round trip after the answer.

Anything that cannot be scored this way (token-id or batched prompts, a conversation that ends
with the client's own assistant prefill, an upstream error) returns None: the response is then
scored along the path, never failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from service.errors import APIError
from service.proxy._body import dumps
from service.proxy._plan import CalibrationPlan
from service.proxy._upstream import Upstream, UpstreamTarget

__all__ = [
    "LikelihoodScorer",
    "chat_likelihoods",
    "completion_likelihoods",
    "completion_request",
    "option_likelihoods",
    "option_likelihoods_result",
    "start_option_likelihoods",
    "sum_option_logprobs",
    "text_logprobs",
]

#: (upstream, target, upstream body, options) -> each option's log-likelihood, or None
LikelihoodScorer = Callable[
    [Upstream, UpstreamTarget | None, dict[str, Any], Sequence[str]],
    Awaitable[list[float] | None],
]

logger = logging.getLogger(__name__)

# Fields of a chat request that change how the conversation is rendered into a prompt.
_CHAT_RENDERING = ("chat_template", "chat_template_kwargs", "tools", "documents")


def completion_request(body: dict[str, Any], options: Sequence[str]) -> dict[str, Any] | None:
    """The batched completions request scoring every option after the prompt (None: can't)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return None
    lead = "" if not prompt or prompt[-1].isspace() else " "
    return {
        "model": body.get("model"),
        "prompt": [prompt + lead + option for option in options],
        "max_tokens": 1,
        "temperature": 0,
        "prompt_logprobs": 0,
    }


def chat_requests(body: dict[str, Any], options: Sequence[str]) -> list[dict[str, Any]] | None:
    """One chat request per option: the option as the assistant's (continued) turn."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        return None  # the client prefilled the answer: options would not follow the prompt
    extra = {key: body[key] for key in _CHAT_RENDERING if key in body}
    return [
        {
            "model": body.get("model"),
            "messages": [*messages, {"role": "assistant", "content": option}],
            "continue_final_message": True,
            "add_generation_prompt": False,
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": 0,
            **extra,
        }
        for option in options
    ]


def sum_option_logprobs(prompt_logprobs: Any, text: str) -> float | None:
    """Sum the logprobs of the last prompt tokens whose decoded text covers ``text``.

    ``prompt_logprobs`` is vLLM's list (None for the first token, then ``{token_id: {logprob,
    rank, decoded_token}}`` holding the prompt's own token when 0 top logprobs are asked).
    """
    found = text_logprobs(prompt_logprobs, text)
    return None if found is None else found[0]


def text_logprobs(prompt_logprobs: Any, text: str) -> tuple[float, int] | None:
    """(sum of logprobs, number of tokens) of the last prompt tokens covering ``text``."""
    if not isinstance(prompt_logprobs, list) or not text:
        return None
    covered, total = 0, 0.0
    for count, entry in enumerate(reversed(prompt_logprobs), start=1):
        if not isinstance(entry, dict) or not entry:
            return None
        info = next(iter(entry.values()))
        if not isinstance(info, dict) or not isinstance(info.get("logprob"), int | float):
            return None
        total += float(info["logprob"])
        covered += len(info.get("decoded_token") or "")
        if covered >= len(text):
            return (total if math.isfinite(total) else -math.inf), count
    return None


async def option_likelihoods(
    upstream: Upstream,
    target: UpstreamTarget | None,
    content: bytes,
    completions: bool,
    options: Sequence[str],
) -> list[float] | None:
    """Every option's log-likelihood after the request's prompt (``content``: the upstream body
    of a completions request if `completions`, else of a chat request).

    None when this request cannot be scored that way or the upstream fails: the caller then
    scores along the generated path.
    """
    scorer = completion_likelihoods if completions else chat_likelihoods
    return await _score(upstream, target, content, scorer, options)


async def _score(
    upstream: Upstream,
    target: UpstreamTarget | None,
    content: bytes,
    scorer: LikelihoodScorer,
    options: Sequence[str],
) -> list[float] | None:
    try:
        body = json.loads(content)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    try:
        return await scorer(upstream, target, body, options)
    except APIError as error:
        logger.warning("option likelihoods failed, scoring along the path: %s", error.message)
        return None


async def completion_likelihoods(
    upstream: Upstream, target: UpstreamTarget | None, body: dict[str, Any], options: Sequence[str]
) -> list[float] | None:
    request = completion_request(body, options)
    if request is None:
        return None
    reply = await upstream.post_json(target, "completions", dumps(request))
    choices = reply.body.get("choices") if isinstance(reply.body, dict) else None
    if not isinstance(choices, list) or len(choices) != len(options):
        return None
    by_index = {c.get("index", k): c for k, c in enumerate(choices) if isinstance(c, dict)}
    return _each_option(
        [(by_index.get(k) or {}).get("prompt_logprobs") for k in range(len(options))], options
    )


async def chat_likelihoods(
    upstream: Upstream, target: UpstreamTarget | None, body: dict[str, Any], options: Sequence[str]
) -> list[float] | None:
    requests = chat_requests(body, options)
    if requests is None:
        return None
    replies = await asyncio.gather(
        *(upstream.post_json(target, "chat/completions", dumps(r)) for r in requests)
    )
    bodies = [reply.body if isinstance(reply.body, dict) else {} for reply in replies]
    return _each_option([body.get("prompt_logprobs") for body in bodies], options)


def _each_option(prompt_logprobs: Sequence[Any], options: Sequence[str]) -> list[float] | None:
    """Every option's log-likelihood from its request's `prompt_logprobs` (None if any lacks)."""
    out = []
    for entries, option in zip(prompt_logprobs, options, strict=True):
        lp = sum_option_logprobs(entries, option)
        if lp is None:
            return None
        out.append(lp)
    return out


def start_option_likelihoods(
    upstream: Upstream,
    target: UpstreamTarget | None,
    plan: CalibrationPlan,
    content: bytes,
    scorer: LikelihoodScorer,
) -> asyncio.Task[list[float] | None] | None:
    """Start scoring the options next to the client's request when the plan asks for it."""
    if plan.mode != "options" or plan.scoring != "likelihood" or not plan.options:
        return None
    task = asyncio.create_task(_score(upstream, target, content, scorer, plan.options))
    task.add_done_callback(_retrieve)
    return task


async def option_likelihoods_result(
    task: asyncio.Task[list[float] | None] | None,
) -> list[float] | None:
    """The likelihoods, or None (not asked, cancelled, or failed: score along the path)."""
    if task is None:
        return None
    try:
        return await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # our own caller is being cancelled
        return None
    except Exception:  # a bug here must not fail a good answer: path scoring still works
        logger.exception("option likelihoods failed")
        return None


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # mark retrieved: a failure is logged where the result is awaited
