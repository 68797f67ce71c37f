"""`CalibClient` and `AsyncCalibClient`: the gateway's API as typed Python calls over httpx.

Both share the request descriptions of `requests.py` and the retry policy of `retry.py`; only the
transport (blocking or async) differs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from . import requests as api
from .errors import APIConnectionError
from .results import Completion, StreamResult
from .retry import RetryPolicy

DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)


def _base_url(base_url: str) -> str:
    """Accept the gateway root or its `/v1` base URL, as the OpenAI SDK does."""
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else f"{base}/v1"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class CalibClient:
    """Blocking client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: httpx.Timeout | float = (DEFAULT_TIMEOUT),
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=_base_url(base_url),
            headers=_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> CalibClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: api.Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, json=call.json, params=call.params
                )
            except httpx.TransportError as error:
                if not self.retry.should_retry_error(error, attempt):
                    raise APIConnectionError(str(error) or type(error).__name__) from error
                time.sleep(self.retry.delay(attempt))
            else:
                if not self.retry.should_retry_status(response.status_code, attempt):
                    return response
                time.sleep(self.retry.delay(attempt, response))
            attempt += 1

    def _json(self, call: api.Call) -> Any:
        return api.decode(self._send(call))

    def chat(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Completion:
        """POST /v1/chat/completions; `options`, `idk_option`, `mode`, `abstain`, `threshold`,
        `task` go into the request's `calibration` object, anything else into the body."""
        return Completion(self._json(api.chat_call(model, messages, **kwargs)))

    def complete(self, model: str, prompt: str, **kwargs: Any) -> Completion:
        """POST /v1/completions (legacy text completions, e.g. few-shot prompts to a base model)."""
        return Completion(self._json(api.completion_call(model, prompt, **kwargs)))

    def stream_chat(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> Iterator[dict[str, Any] | StreamResult]:
        """Yield each chunk as it arrives, then the `StreamResult` (text + calibration) last."""
        call = api.chat_call(model, messages, stream=True, **kwargs)
        result = StreamResult()
        try:
            with self._http.stream(call.method, call.path, json=call.json) as response:
                if response.is_error:
                    response.read()
                    api.decode(response)
                for chunk in api.sse_events(response.iter_lines()):
                    result.add(chunk)
                    yield chunk
        except httpx.TransportError as error:
            raise APIConnectionError(str(error) or type(error).__name__) from error
        yield result

    def feedback(self, id: str, correct: bool | None = None, label: str | None = None) -> Any:
        """Label one prediction: `correct=True/False`, or `label=` the true answer."""
        return self._json(api.feedback_call(api.feedback_item(id, correct, label)))

    def feedback_many(self, items: list[dict[str, Any]]) -> Any:
        """Label many predictions at once (atomic: all are stored or none)."""
        return self._json(api.feedback_call(items))

    def profile(self, model: str, task: str | None = None) -> Any:
        return self._json(api.profile_call(model, task))

    def refit(self, model: str, task: str | None = None, wait: bool = True) -> Any:
        return self._json(api.refit_call(model, task, wait))

    def reliability(self, model: str, task: str | None = None) -> Any:
        return self._json(api.reliability_call(model, task))

    def optimize_prompt(self, model: str, **params: Any) -> Any:
        """Start a prompt-optimization job (docs/prompt-optimization.md); 202 + its state."""
        return self._json(api.prompt_optimization_call(model, **params))

    def prompt_optimization(self, job_id: str) -> Any:
        """A prompt-optimization job's status, history and result."""
        return self._json(api.prompt_optimization_status_call(job_id))

    def resume_prompt_optimization(self, job_id: str) -> Any:
        """Continue a failed job where it stopped (no candidate is evaluated twice)."""
        return self._json(api.prompt_optimization_resume_call(job_id))


class AsyncCalibClient:
    """Async client (asyncio). Use as an async context manager, or `await aclose()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: httpx.Timeout | float = (DEFAULT_TIMEOUT),
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=_base_url(base_url),
            headers=_headers(api_key),
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def __aenter__(self) -> AsyncCalibClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: api.Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, json=call.json, params=call.params
                )
            except httpx.TransportError as error:
                if not self.retry.should_retry_error(error, attempt):
                    raise APIConnectionError(str(error) or type(error).__name__) from error
                await asyncio.sleep(self.retry.delay(attempt))
            else:
                if not self.retry.should_retry_status(response.status_code, attempt):
                    return response
                await asyncio.sleep(self.retry.delay(attempt, response))
            attempt += 1

    async def _json(self, call: api.Call) -> Any:
        return api.decode(await self._send(call))

    async def chat(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Completion:
        return Completion(await self._json(api.chat_call(model, messages, **kwargs)))

    async def complete(self, model: str, prompt: str, **kwargs: Any) -> Completion:
        return Completion(await self._json(api.completion_call(model, prompt, **kwargs)))

    async def stream_chat(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> AsyncIterator[dict[str, Any] | StreamResult]:
        call = api.chat_call(model, messages, stream=True, **kwargs)
        result = StreamResult()
        try:
            async with self._http.stream(call.method, call.path, json=call.json) as response:
                if response.is_error:
                    await response.aread()
                    api.decode(response)
                async for line in response.aiter_lines():
                    chunk = api.parse_sse_line(line)
                    if chunk is api.DONE:
                        break
                    if chunk is not None:
                        result.add(chunk)
                        yield chunk
        except httpx.TransportError as error:
            raise APIConnectionError(str(error) or type(error).__name__) from error
        yield result

    async def feedback(self, id: str, correct: bool | None = None, label: str | None = None) -> Any:
        return await self._json(api.feedback_call(api.feedback_item(id, correct, label)))

    async def feedback_many(self, items: list[dict[str, Any]]) -> Any:
        return await self._json(api.feedback_call(items))

    async def profile(self, model: str, task: str | None = None) -> Any:
        return await self._json(api.profile_call(model, task))

    async def refit(self, model: str, task: str | None = None, wait: bool = True) -> Any:
        return await self._json(api.refit_call(model, task, wait))

    async def reliability(self, model: str, task: str | None = None) -> Any:
        return await self._json(api.reliability_call(model, task))

    async def optimize_prompt(self, model: str, **params: Any) -> Any:
        return await self._json(api.prompt_optimization_call(model, **params))

    async def prompt_optimization(self, job_id: str) -> Any:
        return await self._json(api.prompt_optimization_status_call(job_id))

    async def resume_prompt_optimization(self, job_id: str) -> Any:
        return await self._json(api.prompt_optimization_resume_call(job_id))
