"""Scoring one candidate prompt: replay the labeled items through the upstream with it injected.

Each item is sent exactly as the gateway would serve it with the candidate as the profile's
system prompt (same `service.proxy` functions, same policy):

* chat items: the candidate is the system prompt (`inject_system_prompt` under the model's
  `system_prompt_policy`);
* completion items: the candidate is a prefix of the prompt (`prefix_prompt`: the candidate, a
  blank line, then the client's prompt), which is what the gateway does with a profile's system
  prompt on `/v1/completions`. For a few-shot base-model prompt it is an instruction that
  precedes the examples and the answer;
* items with ``add_idk`` get the IDK choice shown the gateway's way (`service.proxy`).

Requests are greedy (`temperature: 0`), short (`max_tokens: 8`, stop at a newline) and ask for
the top-20 logprobs; an item's `extra_body` (e.g. vLLM's `structured_outputs`) is sent as given;
the answer's option distribution comes from `calibrators.score_options`. An item is correct when
the chosen option is the labeled one; its confidence is the chosen option's probability (T = 1).
An answer that names no option counts as wrong with confidence 0. Accuracy and 10-bin ECE
(`calibrators.expected_calibration_error`) over the items make the `Evaluation`.
Requests run concurrently, at most ``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from calibrators import Evaluation, expected_calibration_error, score_options
from service.prompt_opt.items import LabeledItem
from service.proxy import inject_system_prompt, insert_in_messages, insert_in_prompt, prefix_prompt

__all__ = ["EvaluationError", "ItemResult", "Replayer", "bearer", "scrub", "summarize"]

TOP_LOGPROBS = 20
MAX_TOKENS = 8


class EvaluationError(RuntimeError):
    """The upstream failed while a candidate was being evaluated (the job stops; resumable)."""


@dataclass(frozen=True)
class ItemResult:
    id: str
    answer: str | None
    correct: bool
    confidence: float
    abstained: bool  # chose the IDK option


def bearer(api_key: str | None) -> dict[str, str]:
    """The `Authorization` header for an upstream key (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def scrub(text: str, headers: dict[str, str], limit: int = 200) -> str:
    """An upstream body for an error message (stored with the job): at most `limit` characters,
    our key blanked in case the upstream echoed the request's headers."""
    auth = headers.get("Authorization")
    if auth:
        text = text.replace(auth[len("Bearer ") :], "***")
    return text[:limit]


def summarize(results: list[ItemResult]) -> Evaluation:
    """Accuracy and 10-bin ECE of the results."""
    if not results:
        return Evaluation(float("nan"), float("nan"), 0)
    correct = [r.correct for r in results]
    confidence = [r.confidence for r in results]
    accuracy = sum(correct) / len(correct)
    ece = expected_calibration_error(confidence, correct, n_bins=10)
    return Evaluation(accuracy, ece, len(results))


class Replayer:
    """Sends items to an OpenAI-compatible upstream with a candidate prompt injected."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        model: str,
        *,
        policy: str = "prepend",
        concurrency: int = 8,
        extra: dict[str, Any] | None = None,
        api_key: str | None = None,
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._headers = bearer(api_key)
        self._model = model
        self._policy = policy
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._extra = extra or {}
        self.requests = 0

    def body(self, item: LabeledItem, prompt: str | None) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of one item with `prompt` injected (None: nothing injected)."""
        idk_label, idk_text = item.idk_option, item.idk_text or item.idk_option
        listed = item.options[:-1] if item.add_idk else item.options
        if item.messages is not None:
            messages: Any = item.messages
            if item.add_idk and idk_label:
                messages = insert_in_messages(messages, listed, idk_label, idk_text or "")
            messages = inject_system_prompt(messages, prompt or None, self._policy)
            return "chat/completions", {
                "model": self._model,
                "messages": messages,
                "logprobs": True,
                "top_logprobs": TOP_LOGPROBS,
                "max_tokens": MAX_TOKENS,
                "temperature": 0.0,
                **self._extra,
                **(item.extra_body or {}),
            }
        text: Any = item.prompt
        if item.add_idk and idk_label:
            text = insert_in_prompt(text, listed, idk_label, idk_text or "")
        text = prefix_prompt(text, prompt or None, self._policy)
        return "completions", {
            "model": self._model,
            "prompt": text,
            "logprobs": TOP_LOGPROBS,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "stop": ["\n"],
            **self._extra,
            **(item.extra_body or {}),
        }

    async def one(self, item: LabeledItem, prompt: str | None) -> ItemResult:
        path, body = self.body(item, prompt)
        async with self._limit:
            try:
                response = await self._client.post(
                    f"{self._base}/{path}", json=body, headers=self._headers
                )
            except httpx.HTTPError as error:
                raise EvaluationError(f"upstream unreachable: {error!r}") from error
            self.requests += 1
        if response.status_code != 200:
            raise EvaluationError(
                f"upstream answered {response.status_code}: {scrub(response.text, self._headers)}"
            )
        choice = (response.json().get("choices") or [{}])[0]
        score = score_options(choice.get("logprobs"), item.options)
        confidence = score.raw_confidence if score.found else None
        answer = score.answer if score.found else None
        return ItemResult(
            id=item.id,
            answer=answer,
            correct=answer == item.answer,
            confidence=float(confidence) if confidence is not None else 0.0,
            abstained=answer is not None and answer == item.idk_option,
        )

    async def run(self, items: list[LabeledItem], prompt: str | None) -> list[ItemResult]:
        return list(await asyncio.gather(*(self.one(item, prompt) for item in items)))

    async def evaluate(self, items: list[LabeledItem], prompt: str | None) -> Evaluation:
        return summarize(await self.run(items, prompt))
