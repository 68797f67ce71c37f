"""One (chat) completion end to end: `complete`, and the ASGI fast path that calls it.

`complete(request, principal, serving)` reads the body, resolves the calibration plan, rewrites
the body for the upstream, forwards it, and calibrates what comes back — every endpoint
difference is a call on `serving` (`CHAT` or `COMPLETIONS`, `_serving.py`). The FastAPI routes
(service/routes/proxy.py) and `ProxyFastPath` below both call it.

Every choice is scored, calibrated and recorded on its own (`choices[i].calibration`, its own
feedback id); the top-level `calibration` is choice 0's, and `replace` withholds each abstaining
choice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from calibrators import Profile
from service import metrics
from service.auth import Principal, authenticate
from service.errors import APIError, internal_error_response
from service.proxy._body import (
    LogprobWish,
    check_content_type,
    compact_json,
    dumps,
    json_encoder,
    parse_json_body,
)
from service.proxy._confidence import (
    Outcome,
    calibrate_choice,
    choice_id,
    choice_index,
    no_choice_outcome,
)
from service.proxy._likelihood import option_likelihoods_result, start_option_likelihoods
from service.proxy._plan import CalibrationPlan, parse_calibration, resolve_plan
from service.proxy._serving import CHAT, COMPLETIONS, Echoed, OpenAIServing
from service.proxy._streaming import EventStreamResponse, StreamContext, relay
from service.proxy._upstream import UpstreamResponse, error_kind
from service.proxy._visual_probe import VisualProbe, start_visual_probe
from service.proxy._visual_probe import observe as observe_visual_probe
from service.services import Services
from service.settings import ModelConfig
from service.shift import RequestInputs
from service.store import PredictionRecord

__all__ = ["ProxyFastPath", "complete"]

logger = logging.getLogger(__name__)

# Bodies above this size are parsed and checked in a worker thread, not on the event loop.
_OFFLOAD_BYTES = 256 * 1024


def _dumps_request(obj: Any) -> bytes:
    """The upstream body. JSON escapes can smuggle in lone surrogates, which are not text."""
    try:
        return compact_json(obj).encode()
    except UnicodeEncodeError:
        raise APIError(
            400, "The request contains an invalid Unicode escape (a lone surrogate)."
        ) from None


# `json.dumps(prompt, sort_keys=True, ensure_ascii=False)`: the stored hashes depend on it.
_sorted_json = json_encoder((", ", ": "), sort_keys=True)


def _prompt_hash(model: str, prompt: Any) -> str:
    """sha256 of (model, the client's prompt/messages) before any injection; groups repeats."""
    digest = hashlib.sha256(model.encode())
    digest.update(b"\0")
    text = _sorted_json(prompt)
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


@dataclass(slots=True)
class _Prepared:
    """A checked and rewritten request, ready for the upstream."""

    serving: OpenAIServing
    model: str
    config: ModelConfig
    wish: LogprobWish
    plan: CalibrationPlan
    profile: Profile
    stream: bool
    content: bytes  # the upstream body, serialized once
    prompt_hash: str
    request_content: dict[str, Any] | None
    n: int = 1  # choices per prompt
    echoed: tuple[Echoed, ...] | None = None  # what vLLM echoes (OpenAIServing.echoed)
    inputs: RequestInputs | None = None  # for the input-shift gauge (None: it is off)


def _check(
    raw: bytes, serving: OpenAIServing, images: list[bytes] | None = None
) -> tuple[dict[str, Any], str, LogprobWish, Any]:
    """Parse + validate (pure CPU; runs in a thread for big bodies); data-URL images' decoded
    bytes go to `images` when given."""
    body = parse_json_body(raw)
    model, wish = serving.check(body, images)
    return body, model, wish, body[serving.prompt_key]


async def _prepare(request: Request, services: Services, serving: OpenAIServing) -> _Prepared:
    settings = services.settings
    check_content_type(request.headers.get("content-type"))
    raw = await request.body()
    images: list[bytes] | None = [] if services.shift is not None else None
    if len(raw) > _OFFLOAD_BYTES:
        body, model, wish, prompt = await asyncio.to_thread(_check, raw, serving, images)
        prompt_hash = await asyncio.to_thread(_prompt_hash, model, prompt)
    else:
        body, model, wish, prompt = _check(raw, serving, images)
        prompt_hash = _prompt_hash(model, prompt)

    wanted = parse_calibration(body.pop("calibration", None))
    config = settings.model_settings(model)
    profile = await services.profiles.get(model, wanted.task)
    plan = resolve_plan(wanted, profile, config)

    # Sequence mode needs only the sampled tokens' logprobs: don't make the engine compute top-K.
    k = config.top_logprobs if plan.mode == "options" else 0
    system_prompt = profile.system_prompt or config.system_prompt
    serving.inject_logprobs(body, wish, k)
    body[serving.prompt_key] = serving.with_system_prompt(
        _show_idk(prompt, plan, serving), system_prompt, config.system_prompt_policy
    )
    body["model"] = config.served_name or model

    return _Prepared(
        serving=serving,
        model=model,
        config=config,
        wish=wish,
        plan=plan,
        profile=profile,
        stream=bool(body.get("stream")),
        content=_dumps_request(body),
        prompt_hash=prompt_hash,
        request_content={serving.prompt_key: prompt} if settings.store_request_content else None,
        n=body.get("n") or 1,
        echoed=serving.echoed(body),
        inputs=RequestInputs(prompt, images, profile.task) if images is not None else None,
    )


def _show_idk(prompt: Any, plan: CalibrationPlan, serving: OpenAIServing) -> Any:
    """The client's prompt/messages with the IDK choice the gateway added (docs/idk.md)."""
    if not plan.idk_added or plan.options is None or plan.idk_option is None:
        return prompt
    listed, label, text = plan.options[:-1], plan.idk_option, plan.idk_text or plan.idk_option
    return serving.show_idk(prompt, listed, label, text)


def _submit(
    services: Services, principal: Principal, prep: _Prepared, cid: str, out: Outcome
) -> None:
    """Hand the prediction to the write-behind writer (never blocks, never fails the response)."""
    record = PredictionRecord(
        id=cid,
        model=prep.model,
        task=prep.plan.task,
        tenant=principal.tenant,
        mode=prep.plan.mode,
        options=list(prep.plan.options) if prep.plan.options else None,
        idk_option=prep.plan.idk_option,
        answer=out.answer,
        raw_confidence=out.raw_confidence,
        confidence=out.confidence,
        features=out.features,
        profile_version=out.profile_version,
        prompt_hash=prep.prompt_hash,
        abstained=out.abstained,
        abstain_reason=out.abstain_reason,
        request_content=prep.request_content,
    )
    if prep.inputs is not None and services.shift is not None:
        services.shift.observe(record, prep.inputs)  # embedded on the writer's thread
    try:
        services.writer.submit(record)
    except Exception:  # a full buffer or a closed writer must not turn a good answer into a 500
        logger.exception("could not queue prediction %s for the store", cid)
    task = prep.plan.task
    metrics.observe_prediction(prep.model, task, prep.plan.mode)
    metrics.observe_confidence(prep.model, task, out.raw_confidence, out.confidence)
    if out.abstain_reason is not None:
        metrics.observe_abstention(prep.model, task, out.abstain_reason)
    if prep.plan.visual_probe is not None:
        observe_visual_probe(prep.model, task, out.features, prep.config)


def _headers(cid: str, out: Outcome) -> dict[str, str]:
    return {
        "x-calibration-id": cid,
        "x-calibration-confidence": "null" if out.confidence is None else repr(out.confidence),
        "x-calibration-abstained": "true" if out.abstained else "false",
    }


def _observe_failure(
    model: str | None, endpoint: str, error: APIError, total_s: float, upstream_s: float | None
) -> None:
    kind = error_kind(error)
    if kind is not None:
        metrics.observe_upstream_error(model, kind)
    metrics.observe_request(model, endpoint, error.status, total_s, upstream_s)


async def complete(request: Request, principal: Principal, serving: OpenAIServing) -> Response:
    """Serve one (chat) completion end to end; shared by the routes and `ProxyFastPath`."""
    services: Services = request.app.state.services
    endpoint = serving.endpoint
    clock = time.perf_counter
    started = clock()
    prep: _Prepared | None = None
    upstream_s: float | None = None
    likelihoods = None  # scoring "likelihood": the options scored next to this request
    probe: VisualProbe | None = None  # the visual-reliance probe (_visual_probe.py)
    try:
        prep = await _prepare(request, services, serving)
        upstream = services.upstream
        target = upstream.target(prep.config)  # base URL + this upstream's key
        likelihoods = start_option_likelihoods(
            upstream, target, prep.plan, prep.content, serving.likelihoods
        )
        probe = start_visual_probe(
            upstream, target, prep.plan, prep.content, serving is CHAT, prep.config
        )
        t0 = clock()
        try:
            if prep.stream:
                stream = await upstream.open_stream(target, serving.upstream_path, prep.content)
            else:
                reply = await upstream.post_json(target, serving.upstream_path, prep.content)
        finally:
            upstream_s = clock() - t0
        if prep.stream:
            return _stream(
                services, principal, prep, stream, started, upstream_s, likelihoods, probe
            )
        option_lps = await option_likelihoods_result(likelihoods)
        if probe is not None:
            await _settle_probe(probe, prep, reply.body)
        response = _finish(services, principal, prep, reply.body, option_lps, probe)
    except APIError as error:
        if likelihoods is not None:
            likelihoods.cancel()
        if probe is not None:
            probe.cancel()
        _observe_failure(
            prep.model if prep else None, endpoint, error, clock() - started, upstream_s
        )
        raise
    metrics.observe_request(prep.model, endpoint, 200, clock() - started, upstream_s)
    return response


def _stream(
    services: Services,
    principal: Principal,
    prep: _Prepared,
    upstream_response: UpstreamResponse,
    started: float,
    upstream_s: float,
    likelihoods: asyncio.Task[list[float] | None] | None = None,
    probe: VisualProbe | None = None,
) -> EventStreamResponse:
    def on_done(
        outcomes: list[tuple[str, Outcome]] | None, waited: float, error: APIError | None
    ) -> None:
        total = time.perf_counter() - started
        if error is not None:
            kind = error_kind(error)
            if kind is not None:
                metrics.observe_upstream_error(prep.model, kind)
        for cid, out in outcomes or ():
            _submit(services, principal, prep, cid, out)
        # The status line (200) is long gone; the request counts as 200 either way.
        metrics.observe_request(prep.model, prep.serving.endpoint, 200, total, waited)

    ctx = StreamContext(
        serving=prep.serving,
        wish=prep.wish,
        plan=prep.plan,
        profile=prep.profile,
        model=prep.model,
        rename=prep.config.served_name not in (None, prep.model),
        on_done=on_done,
        n=prep.n,
        echoed=prep.echoed,
        likelihoods=likelihoods,
        probe=probe,
    )
    return EventStreamResponse(
        relay(upstream_response, ctx, upstream_s),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _finish(
    services: Services,
    principal: Principal,
    prep: _Prepared,
    body: Any,
    option_lps: list[float] | None = None,
    probe: VisualProbe | None = None,
) -> Response:
    """Calibrate a complete upstream body, shape it for the client, record the predictions."""
    if not isinstance(body, dict):
        raise APIError(
            502,
            "The upstream engine returned JSON that is not an object.",
            code="upstream_bad_body",
        )
    cid = body.get("id") if isinstance(body.get("id"), str) and body.get("id") else None
    if cid is None:
        cid = f"calib-{uuid.uuid4().hex}"
        body["id"] = cid

    choices = body.get("choices")
    scored: list[tuple[str, Outcome, dict[str, Any]]] = []
    for position, choice in enumerate(choices if isinstance(choices, list) else ()):
        if isinstance(choice, dict):
            scored.append(_finish_choice(cid, position, choice, prep, option_lps, probe))
    prep.serving.trim_body(body, prep.wish)
    if prep.config.served_name not in (None, prep.model):
        body["model"] = prep.model
    if scored:
        scored.sort(key=lambda item: item[2]["id"] != cid)  # choice 0's first
        outcome, public = scored[0][1], scored[0][2]
    else:
        outcome = no_choice_outcome(prep.plan, prep.profile)
        public = outcome.public(cid)
        scored.append((cid, outcome, public))
    body["calibration"] = public

    for choice_cid, choice_outcome, _ in scored:
        _submit(services, principal, prep, choice_cid, choice_outcome)
    return Response(
        dumps(body), media_type="application/json", headers=_headers(public["id"], outcome)
    )


async def _settle_probe(probe: VisualProbe, prep: _Prepared, body: Any) -> None:
    """Wait for the probe of every choice (sequence mode: each answer scored under the perturbed
    image, concurrently); never raises."""
    choices = body.get("choices") if isinstance(body, dict) else None
    waits = []
    for position, choice in enumerate(choices if isinstance(choices, list) else ()):
        if isinstance(choice, dict):
            index = choice_index(choice, position)
            echoed = prep.echoed[0] if prep.echoed else None
            _, text = prep.serving.generated(choice, echoed, prep.echoed is not None)
            waits.append(probe.settle(index, text))
    await asyncio.gather(*waits)


def _finish_choice(
    cid: str,
    position: int,
    choice: dict[str, Any],
    prep: _Prepared,
    option_lps: list[float] | None,
    probe: VisualProbe | None = None,
) -> tuple[str, Outcome, dict[str, Any]]:
    """Score one choice (only what the model generated), withhold or trim it, attach its
    `calibration`."""
    serving = prep.serving
    index = choice_index(choice, position)
    echoed = None
    if prep.echoed is not None:
        prompt = serving.prompt_of(index, prep.n)
        echoed = prep.echoed[prompt] if prompt < len(prep.echoed) else None
    logprobs, text = serving.generated(choice, echoed, prep.echoed is not None)
    probed = probe.result(index, logprobs, option_lps) if probe is not None else None
    outcome = calibrate_choice(
        logprobs,
        text,
        prep.plan,
        prep.profile,
        prep.model,
        likelihoods=option_lps,
        signals=probed.signals if probed is not None else None,
    )
    if probed is not None:
        probed.record(outcome)

    serving.trim_choice(choice, prep.wish)
    withheld = outcome.abstained and prep.plan.abstain == "replace"
    if withheld:
        serving.withhold(choice, prep.plan.idk_message)
    choice_cid = choice_id(cid, index)
    public = outcome.public(choice_cid, withheld=withheld)
    choice["calibration"] = public
    return choice_cid, outcome, public


# ------------------------------------------------------------------------ ASGI fast path
# Why: profiled after the upstream-client change (docs/performance.md), FastAPI's exception
# middleware, routing, request/response wrapping and dependency resolution were ~25 % of the
# gateway's CPU per proxied request — more than calibration and our request handling together.
# This middleware answers the two hot routes by calling exactly what their FastAPI endpoints
# call (`authenticate`, then `complete`) and hands every other request (and every other method
# on those paths) to FastAPI. The FastAPI routes stay registered: they document the API in
# OpenAPI and remain the code path if this middleware is not installed.
#
# Errors keep their contract: an `APIError` becomes its OpenAI-shaped response, anything else is
# logged and answered 500 in the same shape (what `install_error_handlers` does for FastAPI).
# It sits inside `BodyLimitMiddleware`, so the body cap applies unchanged.

_HOT_PATHS: dict[str, OpenAIServing] = {CHAT.endpoint: CHAT, COMPLETIONS.endpoint: COMPLETIONS}


class ProxyFastPath:
    """Serve `POST /v1/chat/completions` and `/v1/completions` directly; pass everything else
    to the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        serving = _HOT_PATHS.get(scope["path"])
        if serving is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            principal = await authenticate(request)
            response: Response = await complete(request, principal, serving)
        except APIError as error:
            response = error.response()
        except ClientDisconnect:
            return  # nobody to answer
        except Exception:
            response = internal_error_response("POST", scope["path"])
        await response(scope, receive, send)
