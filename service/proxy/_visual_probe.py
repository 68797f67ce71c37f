"""The visual-reliance probe: does the answer depend on the image? (docs/api.md)

When the plan asks for it (`calibration.visual_probe`, or the model's `visual_probe` config), the
gateway asks the upstream the same question again with every image perturbed
(`_perturb.py`: blank / noise / blur) and compares:

* **options mode** — the option distribution under the perturbed image does not depend on the
  answer, so its request is sent *concurrently* with the client's (started before the client's
  request goes out); the response waits for the slower of the two. ``visual_reliance`` is the
  total-variation distance between the two option distributions (raw, T = 1);
* **sequence mode** — after the answer, the generated text is scored under the perturbed image
  (the answer appended as the assistant's turn, its prompt logprobs read the way
  `_likelihood.py` scores options). ``visual_reliance`` is the relative drop of the answer's
  per-token (geometric-mean) probability: ``max(0, 1 - q / p)``. The served confidence waits
  for it, so a logistic profile over `visual_reliance` sees it and it is recorded with the
  prediction.

The result becomes the signal ``visual_reliance`` (`calibrate_choice(signals=...)`, recorded in
`features.signals`), and two public fields: ``visual_reliance`` and ``visual_probe`` (what was
done, or skipped/failed and why). A probe never fails the answer: every error, timeout or bug
ends as ``{"status": "failed", "reason": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calibrators import score_options, score_sequence
from service import metrics
from service.errors import APIError
from service.proxy._body import dumps
from service.proxy._likelihood import chat_likelihoods, chat_requests, text_logprobs
from service.proxy._perturb import perturb_data_url
from service.proxy._plan import CalibrationPlan
from service.proxy._upstream import Upstream, UpstreamTarget
from service.settings import ModelConfig, Perturbation

__all__ = ["SIGNAL", "ProbeResult", "VisualProbe", "observe", "start_visual_probe"]

logger = logging.getLogger(__name__)

#: The signal name the probe records (`features.signals`, refit feature sets).
SIGNAL = "visual_reliance"

# Images above this many data-URL bytes are perturbed in a worker thread.
_OFFLOAD_BYTES = 256 * 1024

# Options mode: the probe's answer only has to name an option, not to finish a long reply.
_MAX_TOKENS = 32

# Fields that must not reach the probe's own request: it is one plain, deterministic answer.
_DROPPED = ("stream", "stream_options", "n", "best_of", "seed")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One choice's probe: its signal (None: not measured) and the public `visual_probe`."""

    reliance: float | None
    status: str  # "done" | "skipped" | "failed"
    perturbation: str
    reason: str | None = None
    images: int = 0
    perturbed_answer: str | None = None
    perturbed_confidence: float | None = None

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {"perturbation": self.perturbation, "status": self.status}
        if self.reason is not None:
            body["reason"] = self.reason
        if self.images:
            body["images"] = self.images
        if self.perturbed_answer is not None:
            body["perturbed_answer"] = self.perturbed_answer
        if self.perturbed_confidence is not None:
            body["perturbed_confidence"] = self.perturbed_confidence
        return body

    @property
    def signals(self) -> dict[str, float] | None:
        return None if self.reliance is None else {SIGNAL: self.reliance}

    def record(self, outcome: Any) -> None:
        """Attach to a calibrated `Outcome`: its public fields and a short stored status."""
        outcome.extras["visual_reliance"] = self.reliance
        outcome.extras["visual_probe"] = self.public()
        outcome.features["visual_probe"] = f"{self.perturbation}:{self.status}" + (
            f":{self.reason}" if self.reason else ""
        )


class _Skip(Exception):
    """The probe does not apply (reason) or failed (reason, failed=True)."""

    def __init__(self, reason: str, failed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failed = failed


def _perturbed_body(body: dict[str, Any], kind: Perturbation) -> tuple[dict[str, Any], int]:
    """The upstream body with every image perturbed (a copy), and the number of images."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _Skip("no_images")
    out, images = [], 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if not isinstance(url, str) or not url.lower().startswith("data:"):
                    raise _Skip("remote_image")  # http(s) images are never fetched by the gateway
                try:
                    new_url = perturb_data_url(url, kind)
                except (APIError, OSError, ValueError) as exc:
                    raise _Skip("bad_image", failed=True) from exc
                new_image = {**image, "url": new_url} if isinstance(image, dict) else new_url
                parts.append({**part, "image_url": new_image})
                images += 1
            else:
                parts.append(part)
        out.append({**message, "content": parts})
    if not images:
        raise _Skip("no_images")
    probe = {k: v for k, v in body.items() if k not in _DROPPED}
    probe["messages"] = out
    probe["temperature"] = 0
    for key in ("max_tokens", "max_completion_tokens"):  # the answer names its option early
        limit = probe.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > _MAX_TOKENS:
            probe[key] = _MAX_TOKENS
    if "max_tokens" not in probe and "max_completion_tokens" not in probe:
        probe["max_tokens"] = _MAX_TOKENS
    return probe, images


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, APIError):
        return error.code or f"upstream_status_{error.status}"
    return "internal_error"


class VisualProbe:
    """One request's probe, started next to the client's request."""

    def __init__(
        self,
        upstream: Upstream,
        target: UpstreamTarget | None,
        plan: CalibrationPlan,
        perturbation: Perturbation,
        body: dict[str, Any] | None,
        timeout_s: float | None,
        size: int,
    ) -> None:
        self.upstream = upstream
        self.target = target
        self.plan = plan
        self.perturbation = perturbation
        self.timeout_s = timeout_s
        self.images = 0
        self._scored: dict[int, tuple[float, int] | BaseException] = {}
        self._prepared = asyncio.create_task(self._prepare(body, size))
        self._prepared.add_done_callback(_retrieve)
        self._options: asyncio.Task[tuple[list[float], str | None]] | None = None
        if plan.mode == "options":
            self._options = asyncio.create_task(self._bounded(self._option_score()))
            self._options.add_done_callback(_retrieve)

    # ------------------------------------------------------------------ upstream side

    async def _prepare(self, body: dict[str, Any] | None, size: int) -> dict[str, Any]:
        if body is None:
            raise _Skip("no_images")
        if size > _OFFLOAD_BYTES:
            probe, images = await asyncio.to_thread(_perturbed_body, body, self.perturbation)
        else:
            probe, images = _perturbed_body(body, self.perturbation)
        self.images = images
        return probe

    async def _bounded(self, coro: Any) -> Any:
        if self.timeout_s is None:
            return await coro
        return await asyncio.wait_for(coro, self.timeout_s)

    async def _option_score(self) -> tuple[list[float], str | None]:
        """(option distribution, answer) with the perturbed image, scored as the answer is."""
        body = await self._prepared
        options = self.plan.options or ()
        if self.plan.scoring == "likelihood":
            likelihoods = await chat_likelihoods(self.upstream, self.target, body, options)
            if likelihoods is None:
                raise _Skip("no_prompt_logprobs", failed=True)
            probs = [float(p) for p in _softmax(likelihoods)]
            return probs, options[max(range(len(probs)), key=probs.__getitem__)]
        reply = await self.upstream.post_json(self.target, "chat/completions", dumps(body))
        choices = reply.body.get("choices") if isinstance(reply.body, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        if not logprobs:
            raise _Skip("upstream_returned_no_logprobs", failed=True)
        score = score_options(logprobs, options)
        if not score.found:
            raise _Skip("perturbed_answer_names_no_option", failed=True)
        return [float(p) for p in score.probs()], score.answer

    async def _text_score(self, text: str) -> tuple[float, int]:
        """(sum of logprobs, tokens) of `text` as the answer under the perturbed image."""
        body = await self._prepared
        requests = chat_requests(body, [text])
        if not requests:
            raise _Skip("assistant_prefill")
        request = {k: v for k, v in requests[0].items() if k not in ("logprobs", "top_logprobs")}
        reply = await self.upstream.post_json(self.target, "chat/completions", dumps(request))
        entries = reply.body.get("prompt_logprobs") if isinstance(reply.body, dict) else None
        found = text_logprobs(entries, text)
        if found is None:
            raise _Skip("no_prompt_logprobs", failed=True)
        return found

    # ------------------------------------------------------------------ serving side

    async def settle(self, index: int, text: str | None) -> None:
        """Wait for what choice `index` needs: the perturbed distribution (options mode), or
        `text` scored under the perturbed image (sequence mode). Never raises."""
        try:
            if self._options is not None:
                await asyncio.wait((self._options,))
            elif index not in self._scored and text and text.strip():
                self._scored[index] = await self._bounded(self._text_score(text))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # failures are reported by `result`
            self._scored[index] = exc

    async def settle_rest(self) -> None:
        """Wait for the perturbed distribution (options mode) before the last choices score."""
        await self.settle(-1, None)

    def cancel(self) -> None:
        self._prepared.cancel()
        if self._options is not None:
            self._options.cancel()

    def result(self, index: int, logprobs: Any, likelihoods: Any) -> ProbeResult:
        """Choice `index`'s result, from its own (main) logprobs; call after `settle`."""
        try:
            return self._result(index, logprobs, likelihoods)
        except Exception as exc:
            return self._failed(exc)

    def _failed(self, exc: BaseException) -> ProbeResult:
        if isinstance(exc, _Skip):
            status = "failed" if exc.failed else "skipped"
            return ProbeResult(None, status, self.perturbation, exc.reason, self.images)
        if not isinstance(exc, APIError | TimeoutError):
            logger.exception("visual probe failed", exc_info=exc)
        else:
            logger.warning("visual probe failed: %s", _failure_reason(exc))
        return ProbeResult(None, "failed", self.perturbation, _failure_reason(exc), self.images)

    def _result(self, index: int, logprobs: Any, likelihoods: Any) -> ProbeResult:
        prepared = self._prepared
        if prepared.done() and not prepared.cancelled() and prepared.exception() is not None:
            return self._failed(prepared.exception())  # type: ignore[arg-type]
        if self._options is not None:
            if not self._options.done() or self._options.cancelled():
                return self._failed(_Skip("not_finished", failed=True))
            if self._options.exception() is not None:
                return self._failed(self._options.exception())  # type: ignore[arg-type]
            q, perturbed_answer = self._options.result()
            main = score_options(logprobs, self.plan.options or (), likelihoods=likelihoods)
            if not main.found:
                return self._failed(_Skip("answer_names_no_option"))
            p = main.probs()
            reliance = 0.5 * float(sum(abs(a - b) for a, b in zip(p, q, strict=True)))
            answer_index = main.answer_index or 0
            return ProbeResult(
                _unit(reliance),
                "done",
                self.perturbation,
                images=self.images,
                perturbed_answer=perturbed_answer,
                perturbed_confidence=float(q[answer_index]),
            )
        scored = self._scored.get(index)
        if scored is None:
            return self._failed(_Skip("empty_answer"))
        if isinstance(scored, BaseException):
            return self._failed(scored)
        main_raw = score_sequence(logprobs).raw_confidence
        if main_raw is None or main_raw <= 0.0:
            return self._failed(_Skip("upstream_returned_no_logprobs"))
        total, count = scored
        perturbed = math.exp(total / count) if count else 0.0
        return ProbeResult(
            _unit(1.0 - perturbed / main_raw),
            "done",
            self.perturbation,
            images=self.images,
            perturbed_confidence=perturbed,
        )


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # marked retrieved: a failure is reported by `result`


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    if not math.isfinite(top):
        return [1.0 / len(values)] * len(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0


def start_visual_probe(
    upstream: Upstream,
    target: UpstreamTarget | None,
    plan: CalibrationPlan,
    content: bytes,
    chat: bool,
    config: ModelConfig,
) -> VisualProbe | None:
    """Start the probe when the plan asks for one (None: not asked). `content` is the upstream
    body; `chat`: the chat endpoint (completions carry no images)."""
    if plan.visual_probe is None:
        return None
    body: dict[str, Any] | None = None
    if chat:
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
    return VisualProbe(
        upstream,
        target,
        plan,
        plan.visual_probe,
        body,
        config.visual_probe.timeout_s,
        len(content),
    )


def observe(model: str, task: str, features: Mapping[str, Any], config: ModelConfig) -> None:
    """Metrics of one recorded prediction's probe (nothing when it was not probed)."""
    status = features.get("visual_probe")
    if not isinstance(status, str):
        return
    signals = features.get("signals")
    reliance = signals.get(SIGNAL) if isinstance(signals, dict) else None
    metrics.observe_visual_probe(
        model,
        task,
        status.split(":")[1] if ":" in status else status,
        reliance if isinstance(reliance, int | float) else None,
        config.visual_probe.low_reliance_floor,
    )
