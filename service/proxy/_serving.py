"""One serving object per endpoint, and the body rewrites they are made of.

`CHAT` (`/v1/chat/completions`) and `COMPLETIONS` (`/v1/completions`) hold everything that
differs between the two endpoints — how a body is checked, where the prompt sits, how logprobs
are asked for and trimmed back, how a choice's text and logprobs are read, how an answer is
withheld — so the handler, the streaming relay and option scoring have no endpoint branches
(the same split as vLLM's `OpenAIServingChat` / `OpenAIServingCompletion`).

On the way up: ask the engine for the logprobs calibration needs (keeping the client's own wish,
the larger of both) and inject the profile's system prompt. On the way down: trim logprobs back
to what the client asked for, and withhold an answer the `replace` policy abstains on.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any, TypeGuard

from service.proxy._body import (
    LogprobWish,
    check_chat,
    check_completions,
    validate_image_parts,
)
from service.proxy._confidence import (
    echoed_count,
    echoed_in_first_chunk,
    generated_completion,
    generated_text,
)
from service.proxy._idk import insert_in_messages, insert_in_prompt
from service.proxy._likelihood import LikelihoodScorer, chat_likelihoods, completion_likelihoods

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "LogprobAccumulator",
    "OpenAIServing",
    "ServingChat",
    "ServingCompletion",
    "inject_chat_logprobs",
    "inject_completion_logprobs",
    "inject_system_prompt",
    "prefix_prompt",
    "trim_chat_body",
    "trim_chat_choice",
    "trim_completion_choice",
    "withhold_chat",
    "withhold_completion",
]


# ---------------------------------------------------------------------------- on the way up


def inject_chat_logprobs(body: dict[str, Any], wish: LogprobWish, k: int) -> None:
    """`logprobs=true`, `top_logprobs=max(client's, k)`. k=0 for sequence mode (token only).

    `top_logprobs` without `logprobs` is left as sent: the engine rejects it, and the client
    gets the engine's own error rather than an answer the engine would not have given.
    """
    if not wish.enabled and body.get("top_logprobs") not in (None, 0):
        return
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
        merged: str | list[Any]
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
    """Give the client back only the logprobs it asked for (in place; chunks or messages).

    vLLM lists, per token, the sampled token first and then the top-K by rank (the sampled one
    not twice), and keeps the first `top_logprobs` entries of that list. The list for K is the
    list for the client's n extended, so its first n entries are exactly vLLM's answer for n.
    """
    logprobs = choice.get("logprobs")
    if logprobs is None:
        return
    if not wish.enabled:
        choice["logprobs"] = None
        return
    if wish.listed:
        return
    n = wish.top
    for entry in logprobs.get("content") or ():
        top = entry.get("top_logprobs")
        if top and len(top) > n:
            del top[n:]


def trim_chat_body(body: dict[str, Any], wish: LogprobWish) -> None:
    """The response-level `prompt_logprobs` of a chat body: with `echo`, vLLM computes them at
    the request's `top_logprobs`, which the gateway raised; cut back by rank."""
    if wish.echo and wish.prompt_logprobs is None:
        _trim_ranked(body.get("prompt_logprobs"), wish.top)


def trim_completion_choice(choice: dict[str, Any], wish: LogprobWish) -> None:
    """Legacy completions: `logprobs: null` unless asked; each top dict cut back to vLLM's own.

    For the client's `logprobs=n` vLLM returns, per position, the sampled (or, with `echo`, the
    prompt) token and the top-n by rank: n entries when that token is among the top-n, else
    n + 1. The gateway's dict for K >= n is that token first, then the top-K in rank order, so
    the answer for n is the first entry plus the next n - 1 or n entries, depending on whether
    the token ranks within the top-n: for an echoed prompt token its rank is in the choice's
    `prompt_logprobs`; a sampled token's is read off the logprobs (a tie counts as more likely,
    as vLLM's own rank does). With `echo` and the client's own
    `prompt_logprobs`, the prompt positions hold vLLM's dicts for that value, cut to the first
    n + 1 entries (vLLM's own cut), and the choice's `prompt_logprobs` are the client's.
    """
    entries = choice.get("prompt_logprobs")
    prompt_entries = entries if wish.echo and isinstance(entries, list) else ()
    logprobs = choice.get("logprobs")
    if logprobs is not None and not wish.enabled:
        choice["logprobs"] = None
    elif logprobs is not None and not wish.listed:
        _trim_completion_tops(logprobs.get("top_logprobs"), prompt_entries, wish)
    if entries is not None and wish.prompt_logprobs is None:
        if wish.echo and wish.enabled:
            _trim_ranked(entries, wish.top)
        else:  # only there because the gateway asked for logprobs with `echo`
            choice["prompt_logprobs"] = None


def _trim_completion_tops(tops: Any, prompt_entries: Any, wish: LogprobWish) -> None:
    if not isinstance(tops, list):
        return
    n, n_prompt = wish.top, len(prompt_entries)
    for i, top in enumerate(tops):
        if not isinstance(top, dict) or len(top) <= n:
            continue
        if i >= n_prompt:
            tops[i] = _top_n(top, n, None)
        elif wish.prompt_logprobs is None:
            tops[i] = _top_n(top, n, _first_rank(prompt_entries[i]))
        elif len(top) > n + 1:  # the client's own prompt_logprobs: vLLM's plain cut
            tops[i] = dict(islice(top.items(), n + 1))


def _top_n(top: dict[str, Any], n: int, rank: int | None) -> dict[str, Any]:
    """vLLM's dict for `logprobs=n` from its dict for a larger K (see trim_completion_choice).

    `rank`: the first token's rank when known (echoed prompt tokens); else read off the logprobs.
    """
    items = iter(top.items())
    first = next(items)
    rest = list(islice(items, n))
    if rank is not None:
        within = rank <= n
    else:
        mine = first[1]
        if not isinstance(mine, int | float):
            return dict([first, *rest])
        # As vLLM ranks: a tie counts as more likely (greedy sampling and top-k break ties
        # differently, so a tied sampled token is not in the top-k's own list).
        above = sum(1 for _, value in rest if isinstance(value, int | float) and value >= mine)
        within = above < n
    return dict([first, *(rest[: n - 1] if within else rest)])


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _first_rank(entry: Any) -> int | None:
    """The prompt token's rank in one vLLM `prompt_logprobs` entry (its first item)."""
    if not isinstance(entry, dict) or not entry:
        return None
    value = next(iter(entry.values()))
    rank = value.get("rank") if isinstance(value, dict) else None
    return rank if isinstance(rank, int) and not isinstance(rank, bool) else None


def _trim_ranked(entries: Any, n: int) -> None:
    """vLLM `prompt_logprobs` entries (`{token_id: {logprob, rank, decoded_token}}`): keep the
    prompt token (first) and the alternatives ranked within the top-n (in place).

    vLLM reports the prompt token's rank as its place in the top-k when it is there, else as
    the number of tokens at least as likely. A token inside the gateway's top-K but outside the
    client's top-n gets the latter, counted from the top-K (which holds every more likely one).
    """
    if not isinstance(entries, list):
        return
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or len(entry) <= 1:
            continue
        items = iter(entry.items())
        first_key, first = next(items)
        kept = {first_key: first}
        others = []
        for key, value in items:
            others.append(value)
            rank = value.get("rank") if isinstance(value, dict) else None
            if isinstance(rank, int) and rank <= n:
                kept[key] = value
        rank = first.get("rank") if isinstance(first, dict) else None
        mine = first.get("logprob") if isinstance(first, dict) else None
        if isinstance(rank, int) and n < rank <= len(others) + 1 and _number(mine):
            at_least = sum(
                1
                for value in others
                if isinstance(value, dict) and _number(lp := value.get("logprob")) and lp >= mine
            )
            if at_least + 1 != rank:
                kept[first_key] = {**first, "rank": at_least + 1}
        entries[i] = kept


def withhold_chat(choice: dict[str, Any], message: str) -> None:
    """`replace` policy: the abstaining choice's answer becomes the IDK message; its logprobs go.

    Per choice: with `n > 1` each choice is calibrated and withheld on its own.
    """
    sent = choice.get("message")
    old: dict[str, Any] = sent if isinstance(sent, dict) else {}
    choice["message"] = {"role": old.get("role", "assistant"), "content": message}
    choice["logprobs"] = None


def withhold_completion(choice: dict[str, Any], message: str) -> None:
    """`replace` policy for a legacy completion choice."""
    choice["text"] = message
    choice["logprobs"] = None


# ------------------------------------------------------------------------ serving objects

Echoed = str | int | None


class LogprobAccumulator:
    """One streamed choice's logprobs, gathered chunk by chunk in the endpoint's own shape."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False

    def add(self, logprobs: dict[str, Any]) -> None:
        raise NotImplementedError

    def logprobs(self) -> Any:
        raise NotImplementedError


class _ChatLogprobs(LogprobAccumulator):
    __slots__ = ("content",)

    def __init__(self) -> None:
        super().__init__()
        self.content: list[Any] = []

    def add(self, logprobs: dict[str, Any]) -> None:
        content = logprobs.get("content")
        if content:
            self.seen = True
            self.content.extend(content)

    def logprobs(self) -> Any:
        return {"content": self.content} if self.seen else None


class _CompletionLogprobs(LogprobAccumulator):
    __slots__ = ("token_lps", "tokens", "tops")

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[Any] = []
        self.token_lps: list[Any] = []
        self.tops: list[Any] = []

    def add(self, logprobs: dict[str, Any]) -> None:
        self.seen = True
        self.tokens.extend(logprobs.get("tokens") or ())
        self.token_lps.extend(logprobs.get("token_logprobs") or ())
        self.tops.extend(logprobs.get("top_logprobs") or ())

    def logprobs(self) -> Any:
        if not self.seen:
            return None
        return {"tokens": self.tokens, "token_logprobs": self.token_lps, "top_logprobs": self.tops}


class OpenAIServing:
    """What one OpenAI endpoint does differently; the handler calls these, never branches."""

    endpoint: str  # the gateway's route, also the `endpoint` metric label
    upstream_path: str  # the same endpoint on the upstream, relative to its base URL
    prompt_key: str  # where the client's prompt sits in the body
    chunk_object: str  # `object` of a streamed chunk the gateway makes up itself
    likelihoods: LikelihoodScorer  # options scored after the prompt (`scoring: "likelihood"`)

    def check(
        self, body: dict[str, Any], images: list[bytes] | None = None
    ) -> tuple[str, LogprobWish]:
        """Validate the fields the gateway touches; return (model, the client's logprob wish).
        With `images`, the decoded bytes of data-URL images are appended to it."""
        raise NotImplementedError

    def inject_logprobs(self, body: dict[str, Any], wish: LogprobWish, k: int) -> None:
        raise NotImplementedError

    def with_system_prompt(self, prompt: Any, system_prompt: str | None, policy: str) -> Any:
        raise NotImplementedError

    def show_idk(self, prompt: Any, options: Sequence[str], label: str, text: str) -> Any:
        """The prompt with the IDK choice the gateway added shown to the model (docs/idk.md)."""
        raise NotImplementedError

    def echoed(self, body: dict[str, Any]) -> tuple[Echoed, ...] | None:
        """What vLLM echoes in front of each prompt's answers (None: no echo), per prompt: its
        text, or for a token-id prompt its number of tokens, or None (unknown). `body` is the
        request as sent upstream."""
        raise NotImplementedError

    def prompt_of(self, index: int, n: int) -> int:
        """Which prompt choice `index` answers (`n` choices per prompt)."""
        return 0

    def generated(
        self, choice: dict[str, Any], echoed: Echoed, echo: bool
    ) -> tuple[Any, str | None]:
        """(logprobs, text) a complete choice generated, the echoed prompt cut off."""
        raise NotImplementedError

    def chunk_text(self, choice: dict[str, Any]) -> Any:
        """The text one streamed chunk adds to a choice."""
        raise NotImplementedError

    def streamed_prompt_tokens(
        self, choice: dict[str, Any], echoed: Echoed, text: Any
    ) -> int | None:
        """How many logprob entries of a choice's first chunk are the echoed prompt."""
        return None

    def new_logprobs(self) -> LogprobAccumulator:
        raise NotImplementedError

    def trim_choice(self, choice: dict[str, Any], wish: LogprobWish) -> None:
        raise NotImplementedError

    def trim_body(self, body: dict[str, Any], wish: LogprobWish) -> None:
        """Response-level fields the gateway's raised logprobs changed (chat only)."""

    def withhold(self, choice: dict[str, Any], message: str) -> None:
        raise NotImplementedError


class ServingChat(OpenAIServing):
    """`/v1/chat/completions`: messages, `logprobs: true` + `top_logprobs`, `delta` chunks."""

    endpoint = "/v1/chat/completions"
    upstream_path = "chat/completions"
    prompt_key = "messages"
    chunk_object = "chat.completion.chunk"
    likelihoods = staticmethod(chat_likelihoods)

    def check(
        self, body: dict[str, Any], images: list[bytes] | None = None
    ) -> tuple[str, LogprobWish]:
        model, wish = check_chat(body)
        validate_image_parts(body["messages"], images)
        return model, wish

    inject_logprobs = staticmethod(inject_chat_logprobs)

    def with_system_prompt(self, prompt: Any, system_prompt: str | None, policy: str) -> Any:
        return inject_system_prompt(prompt, system_prompt, policy)

    def show_idk(self, prompt: Any, options: Sequence[str], label: str, text: str) -> Any:
        return insert_in_messages(prompt, options, label, text)

    def echoed(self, body: dict[str, Any]) -> tuple[Echoed, ...] | None:
        """Chat echoes the last message's text when vLLM continues it: the last message is the
        assistant's, or `add_generation_prompt` is false."""
        if body.get("echo") is not True:
            return None
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

    def generated(
        self, choice: dict[str, Any], echoed: Echoed, echo: bool
    ) -> tuple[Any, str | None]:
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        return choice.get("logprobs"), generated_text(content, echoed)

    def chunk_text(self, choice: dict[str, Any]) -> Any:
        delta = choice.get("delta")
        return delta.get("content") if isinstance(delta, dict) else None

    def new_logprobs(self) -> LogprobAccumulator:
        return _ChatLogprobs()

    trim_choice = staticmethod(trim_chat_choice)
    trim_body = staticmethod(trim_chat_body)
    withhold = staticmethod(withhold_chat)


class ServingCompletion(OpenAIServing):
    """`/v1/completions`: a prompt (or a list of them), `logprobs: k`, text chunks, `echo`."""

    endpoint = "/v1/completions"
    upstream_path = "completions"
    prompt_key = "prompt"
    chunk_object = "text_completion"
    likelihoods = staticmethod(completion_likelihoods)

    def check(
        self, body: dict[str, Any], images: list[bytes] | None = None
    ) -> tuple[str, LogprobWish]:
        return check_completions(body)

    inject_logprobs = staticmethod(inject_completion_logprobs)
    with_system_prompt = staticmethod(prefix_prompt)

    def show_idk(self, prompt: Any, options: Sequence[str], label: str, text: str) -> Any:
        return insert_in_prompt(prompt, options, label, text)

    def echoed(self, body: dict[str, Any]) -> tuple[Echoed, ...] | None:
        """Completions echo each prompt."""
        if body.get("echo") is not True:
            return None
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

    def prompt_of(self, index: int, n: int) -> int:
        return index // n

    def generated(
        self, choice: dict[str, Any], echoed: Echoed, echo: bool
    ) -> tuple[Any, str | None]:
        n_prompt = None
        if echo:  # one prompt_logprobs entry per prompt token
            entries = choice.get("prompt_logprobs")
            n_prompt = len(entries) if isinstance(entries, list) else echoed_count(echoed)
        return generated_completion(choice.get("logprobs"), choice.get("text"), n_prompt, echoed)

    def chunk_text(self, choice: dict[str, Any]) -> Any:
        return choice.get("text")

    def streamed_prompt_tokens(
        self, choice: dict[str, Any], echoed: Echoed, text: Any
    ) -> int | None:
        logprobs = choice.get("logprobs")
        tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
        return echoed_in_first_chunk(echoed, text, tokens)

    def new_logprobs(self) -> LogprobAccumulator:
        return _CompletionLogprobs()

    trim_choice = staticmethod(trim_completion_choice)
    withhold = staticmethod(withhold_completion)


CHAT = ServingChat()
COMPLETIONS = ServingCompletion()
