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


def echoed_prompts(body: dict[str, Any], legacy: bool) -> tuple[str | None, ...] | None:
    """What vLLM echoes in front of each prompt's answers (None: no echo; an item None: unknown
    text, e.g. a token-id prompt). `body` is the request as sent upstream.

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
            return (None,) * len(prompt)
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


def generated_text(text: Any, echoed: str | None) -> str | None:
    """The choice's text without the echoed prompt."""
    if not isinstance(text, str):
        return None
    if echoed and text.startswith(echoed):
        return text[len(echoed) :]
    return text


def generated_completion(
    logprobs: Any, text: Any, n_prompt: int | None, echoed: str | None
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
    if out is not None and echoed is None and isinstance(tokens, list):
        # The prompt's text is unknown (token ids): the answer is its tokens' text.
        out = "".join(t for t in tokens[n_prompt:] if isinstance(t, str))
    return logprobs, out
