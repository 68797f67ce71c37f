"""Each choice of a response, as the calibrators should see it: its own id, and only what the
model generated.

Every choice is scored and recorded on its own (`n > 1`, or a list of prompts on
`/v1/completions`). Choice 0 keeps the response id as its calibration id (the top-level
`calibration` stays choice 0's, as before); choice i > 0 gets `<response id>-<i>`.

With `echo`, vLLM returns the prompt in front of the answer: in the text, and on
`/v1/completions` also in the logprobs (one entry per prompt token). Scoring those would mix the
prompt's likelihood into the answer's confidence, so they are cut off first.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "choice_id",
    "choice_index",
    "echoed_count",
    "echoed_in_first_chunk",
    "echoed_prompts",
    "generated_completion",
    "generated_text",
]


def choice_id(response_id: str, index: int) -> str:
    """The calibration (feedback) id of choice `index`."""
    return response_id if index == 0 else f"{response_id}-{index}"


def choice_index(choice: dict[str, Any], position: int) -> int:
    """The choice's own `index`, else its position in the list."""
    index = choice.get("index")
    if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
        return index
    return position


def echoed_prompts(body: dict[str, Any], legacy: bool) -> tuple[str | int | None, ...] | None:
    """What vLLM echoes in front of each prompt's answers (None: no echo), per prompt: its text,
    or for a token-id prompt its number of tokens, or None (unknown). `body` is the request as
    sent upstream.

    Completions echo the prompt. Chat echoes the last message's text when vLLM continues it:
    the last message is the assistant's, or `add_generation_prompt` is false.
    """
    if body.get("echo") is not True:
        return None
    if legacy:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return (prompt,)
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return tuple(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
            return tuple(len(p) for p in prompt)
        if isinstance(prompt, list) and prompt:
            return (len(prompt),)
        return (None,)
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict):
        return (None,)
    if last.get("role") != "assistant" and body.get("add_generation_prompt", True) is not False:
        return ("",)
    content = last.get("content")
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        content = "\n".join(t for t in texts if isinstance(t, str))
    return (content if isinstance(content, str) else None,)


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
