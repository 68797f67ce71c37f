"""Rewriting OpenAI bodies on their way through the gateway.

On the way up: ask the engine for the logprobs calibration needs (keeping the client's own wish,
the larger of both) and inject the profile's system prompt. On the way down: trim logprobs back
to what the client asked for, and withhold an answer the `replace` policy abstains on.
"""

from __future__ import annotations

from typing import Any

from service.request_body import LogprobWish

__all__ = [
    "inject_chat_logprobs",
    "inject_completion_logprobs",
    "inject_system_prompt",
    "prefix_prompt",
    "trim_chat_choice",
    "trim_completion_choice",
    "withhold_chat",
    "withhold_completion",
]


# ---------------------------------------------------------------------------- on the way up


def inject_chat_logprobs(body: dict[str, Any], wish: LogprobWish, k: int) -> None:
    """`logprobs=true`, `top_logprobs=max(client's, k)`. k=0 for sequence mode (token only)."""
    body["logprobs"] = True
    body["top_logprobs"] = max(wish.top, k)


def inject_completion_logprobs(body: dict[str, Any], wish: LogprobWish, k: int) -> None:
    """Legacy completions: `logprobs=max(client's, k)`."""
    body["logprobs"] = max(wish.top, k)


def inject_system_prompt(messages: list[Any], prompt: str | None, policy: str) -> list[Any]:
    """Return the messages with our system prompt applied under `policy`.

    - `prepend`: our prompt comes first. If the client's first message is a system message, ours
      is merged in front of its content (blank line between) instead of adding a second system
      message: many chat templates (Gemma's among them) reject two system turns;
    - `replace`: the client's system messages are dropped, ours takes their place;
    - `off` (or no prompt): unchanged.

    The client's message dicts are not mutated (a merged first message is a new dict).
    """
    if not prompt or policy == "off":
        return messages
    ours = {"role": "system", "content": prompt}
    if policy == "replace":
        return [ours, *(m for m in messages if m.get("role") not in ("system", "developer"))]
    first = messages[0] if messages else None
    if isinstance(first, dict) and first.get("role") == "system":
        content = first.get("content")
        if isinstance(content, str):
            merged = f"{prompt}\n\n{content}" if content else prompt
        elif isinstance(content, list):
            merged = [{"type": "text", "text": prompt + "\n\n"}, *content]
        else:
            merged = prompt
        return [{**first, "content": merged}, *messages[1:]]
    return [ours, *messages]


def prefix_prompt(prompt: Any, system_prompt: str | None, policy: str) -> Any:
    """Legacy completions have no roles: the system prompt becomes a prefix of each text prompt.

    Separated by a blank line unless it already ends with whitespace. Token-id prompts are left
    alone (the gateway does not tokenize).
    """
    if not system_prompt or policy == "off":
        return prompt
    head = system_prompt if system_prompt[-1:].isspace() else system_prompt + "\n\n"
    if isinstance(prompt, str):
        return head + prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return [head + p for p in prompt]
    return prompt


# -------------------------------------------------------------------------- on the way down


def trim_chat_choice(choice: dict[str, Any], wish: LogprobWish) -> None:
    """Give the client back only the logprobs it asked for (in place; chunks or messages)."""
    logprobs = choice.get("logprobs")
    if logprobs is None:
        return
    if not wish.enabled:
        choice["logprobs"] = None
        return
    for entry in logprobs.get("content") or ():
        top = entry.get("top_logprobs")
        if top and len(top) > wish.top:
            if wish.top == 0:
                entry["top_logprobs"] = []
            else:
                top.sort(key=lambda d: d.get("logprob", float("-inf")), reverse=True)
                del top[wish.top :]


def trim_completion_choice(choice: dict[str, Any], wish: LogprobWish) -> None:
    """Legacy completions: `logprobs: null` unless asked; top dicts cut to the asked size."""
    logprobs = choice.get("logprobs")
    if logprobs is None:
        return
    if not wish.enabled:
        choice["logprobs"] = None
        return
    tops = logprobs.get("top_logprobs")
    if not tops:
        return
    keep = max(wish.top, 1)  # OpenAI's logprobs=0 still lists the sampled token
    tokens = logprobs.get("tokens") or []
    for i, top in enumerate(tops):
        if isinstance(top, dict) and len(top) > keep:
            if wish.top == 0 and i < len(tokens) and tokens[i] in top:
                tops[i] = {tokens[i]: top[tokens[i]]}
            else:
                best = sorted(top.items(), key=lambda kv: kv[1], reverse=True)[:keep]
                tops[i] = dict(best)


def withhold_chat(body: dict[str, Any], message: str) -> None:
    """`replace` policy: every choice's answer becomes the IDK message; no logprobs survive.

    All choices are replaced, not only the calibrated choice 0: with n>1 the others would
    otherwise leak the withheld answer.
    """
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        old = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        choice["message"] = {"role": old.get("role", "assistant"), "content": message}
        choice["logprobs"] = None


def withhold_completion(body: dict[str, Any], message: str) -> None:
    """`replace` policy for legacy completions."""
    for choice in body.get("choices") or ():
        if isinstance(choice, dict):
            choice["text"] = message
            choice["logprobs"] = None
