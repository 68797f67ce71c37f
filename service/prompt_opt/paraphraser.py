"""Paraphrases of a prompt from any OpenAI-compatible endpoint.

Two ways to ask (``api``):

* ``completions`` (default; works with base models such as the embedded Gemma 3 270M): a
  few-shot "Instruction: … / Paraphrase: …" completion prompt, ``n=m`` samples at temperature 0.9,
  each cut at the first newline;
* ``chat`` (instruction-tuned models): one message asking for ``m`` paraphrases, one per line.

Either way the text is parsed robustly (`parse_paraphrases`): numbering, bullets and quotes are
stripped, empty lines, lines equal to the original and duplicates (after whitespace
normalization) are dropped, and at most ``m`` are kept.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from calibrators import normalize_prompt
from service.prompt_opt.evaluation import EvaluationError, bearer, scrub

__all__ = ["Paraphraser", "few_shot_prompt", "parse_paraphrases"]

_SHOTS = (
    ("The answer might be", "The answer could be"),
    ("Answer only if you are sure.", "Only give an answer when you are certain."),
    ("Think about the question, then answer.", "Consider the question before you answer."),
)
_LEAD = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.):]|paraphrase\s*\d*\s*:)\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"
_MAX_CHARS = 500


def few_shot_prompt(prompt: str) -> str:
    """The completion prompt that asks a base model for one paraphrase of `prompt`."""
    shots = "".join(f"Instruction: {a}\nParaphrase: {b}\n\n" for a, b in _SHOTS)
    return (
        "Rewrite each instruction in different words, keeping its meaning.\n\n"
        f"{shots}Instruction: {' '.join(prompt.split())}\nParaphrase:"
    )


def parse_paraphrases(texts: list[str], original: str, m: int) -> list[str]:
    """Clean paraphrase lines: no numbering/bullets/quotes, no empties, no duplicates."""
    seen = {normalize_prompt(original)}
    out: list[str] = []
    for text in texts:
        for line in text.splitlines():
            line = _LEAD.sub("", line).strip().strip(_QUOTES).strip()
            if line.lower().startswith(("instruction:", "paraphrase:")):
                continue
            key = normalize_prompt(line)
            if not key or key in seen or len(line) > _MAX_CHARS:
                continue
            seen.add(key)
            out.append(line)
            if len(out) >= m:
                return out
    return out


class Paraphraser:
    """``await paraphraser(prompt, m)`` → up to ``m`` new wordings of ``prompt``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        model: str,
        *,
        api: str = "completions",
        temperature: float = 0.9,
        max_tokens: int = 40,
        api_key: str | None = None,
    ) -> None:
        if api not in ("completions", "chat"):
            raise ValueError("api must be 'completions' or 'chat'")
        self._client = client
        self._base = base_url.rstrip("/")
        self._headers = bearer(api_key)
        self.model = model
        self.api = api
        self._temperature = temperature
        self._max_tokens = max_tokens

    async def __call__(self, prompt: str, m: int) -> list[str]:
        if self.api == "chat":
            body: dict[str, Any] = {
                "model": self.model,
                "messages": [
                    {
                        "role": "user",
                        "content": f"Write {m} different paraphrases of this instruction, one per "
                        f"line, without numbering or comments:\n\n{prompt}",
                    }
                ],
                "temperature": self._temperature,
                "max_tokens": self._max_tokens * m,
            }
            texts = [c.get("message", {}).get("content") or "" for c in await self._post(body)]
        else:
            body = {
                "model": self.model,
                "prompt": few_shot_prompt(prompt),
                "n": m,
                "temperature": self._temperature,
                "max_tokens": self._max_tokens,
                "stop": ["\n"],
            }
            texts = [c.get("text") or "" for c in await self._post(body)]
        return parse_paraphrases(texts, prompt, m)

    async def _post(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        path = "chat/completions" if self.api == "chat" else "completions"
        try:
            response = await self._client.post(
                f"{self._base}/{path}", json=body, headers=self._headers
            )
        except httpx.HTTPError as error:
            raise EvaluationError(f"paraphraser unreachable: {error!r}") from error
        if response.status_code != 200:
            raise EvaluationError(
                f"paraphraser answered {response.status_code}: "
                f"{scrub(response.text, self._headers)}"
            )
        return [c for c in response.json().get("choices") or [] if isinstance(c, dict)]
