"""`/v1/calibration/...prompt-optimizations`: start a prompt-optimization job, read its state.

* `POST /v1/calibration/models/{model}/prompt-optimizations` (admin): 202 + `id`; the job runs
  in this process (in the background) and keeps its state in the store;
* `GET /v1/calibration/prompt-optimizations/{id}` (admin): status, progress, history, result
  (any replica can answer: it reads the store);
* `POST /v1/calibration/prompt-optimizations/{id}/resume` (admin): continue a failed or
  interrupted job where it stopped (no candidate is evaluated twice).

See docs/prompt-optimization.md.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.auth import Principal, require_admin
from service.errors import APIError
from service.prompt_opt import (
    DEFAULT_SEEDS,
    JobConfig,
    JobNotFound,
    create_job,
    get_job,
    items_from_feedback,
    run_job,
    split_items,
)
from service.prompt_opt.items import item_from_record
from service.prompt_opt.job import mark_queued
from service.services import per_app
from service.settings import Settings
from service.store import StoreError

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["calibration"])

# How long a resume waits for a job that recorded `failed` to finish releasing its lease.
_FINISHING_S = 10.0

_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class ParaphraserSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="OpenAI-style base URL; default: the upstream.")
    model: str | None = Field(None, description="Model name there; default: the job's model.")
    api: Literal["completions", "chat"] = "completions"


class PromptOptimizationRequest(BaseModel):
    """A job's items (inline, or the stored feedback) and search parameters."""

    model_config = ConfigDict(extra="forbid")

    task: str = "default"
    items: list[dict[str, Any]] | None = Field(
        None, description="Labeled items in the question-set JSONL schema (docs/datasets.md)."
    )
    from_feedback: bool = Field(False, description="Use labeled predictions with stored content.")
    seeds: list[str] = Field(default_factory=lambda: list(DEFAULT_SEEDS), min_length=1)
    k: int = Field(5, ge=1, le=50)
    m: int = Field(5, ge=1, le=50)
    n: int = Field(10, ge=0, le=100)
    budget: int | None = Field(None, ge=1)
    holdout_fraction: float = Field(0.3, gt=0, lt=1)
    seed: int = 0
    concurrency: int = Field(8, ge=1, le=256)
    paraphraser: ParaphraserSpec = Field(default_factory=ParaphraserSpec)


def _jobs(request: Request) -> set[asyncio.Task[Any]]:
    return per_app(request.app, "prompt_opt_tasks", set)


async def _store_call(function: Any, *args: Any) -> Any:
    try:
        return await asyncio.to_thread(function, *args)
    except StoreError as error:
        raise APIError(
            503, f"The store is unavailable ({error}).", code="store_unavailable"
        ) from None


def _start(request: Request, job_id: str, model: str) -> None:
    app = request.app
    store = app.state.store
    settings: Settings = app.state.settings
    timeout_s = settings.upstream_timeout_s
    keys = settings.upstream_keys(model)  # resolved now, never stored with the job

    def activated(model: str, task: str) -> None:
        profiles = getattr(app.state, "profiles", None)
        if profiles is not None:
            profiles.invalidate(model)

    async def work() -> None:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            try:
                await run_job(
                    store, job_id, client=client, on_activated=activated, upstream_keys=keys
                )
            except Exception:  # recorded in the job row by run_job
                logger.info("prompt optimization %s did not finish", job_id)

    task = asyncio.get_running_loop().create_task(work(), name=f"prompt-opt-{job_id}")
    tasks = _jobs(request)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def _accepted(view: dict[str, Any]) -> JSONResponse:
    url = f"/v1/calibration/prompt-optimizations/{view['id']}"
    return JSONResponse({**view, "status_url": url}, status_code=202, headers={"Location": url})


@router.post(
    "/v1/calibration/models/{model:path}/prompt-optimizations",
    summary="Start a prompt-optimization job (admin); 202 + id.",
    status_code=202,
)
async def start_prompt_optimization(
    model: str,
    body: PromptOptimizationRequest,
    request: Request,
    _: Principal = Depends(require_admin),
) -> JSONResponse:
    if not _TASK_RE.match(body.task):
        raise APIError(422, "`task` must be a short name.", param="task")
    if (body.items is None) == (not body.from_feedback):
        raise APIError(422, "Give exactly one of `items` and `from_feedback: true`.", param="items")
    settings: Settings = request.app.state.settings
    store = request.app.state.store
    if body.items is not None:
        try:
            items = [it for i, r in enumerate(body.items) if (it := item_from_record(r, i))]
        except (KeyError, TypeError, ValueError) as error:
            raise APIError(422, f"Bad item: {error}", param="items") from None
    else:
        if not settings.store_request_content:
            raise APIError(
                409,
                "`from_feedback` needs stored request content: start the gateway with "
                "`store_request_content: true` (see docs/prompt-optimization.md).",
                param="from_feedback",
                code="request_content_not_stored",
            )
        items = await _store_call(items_from_feedback, store, model, body.task)
    search, heldout = split_items(items, body.holdout_fraction, body.seed)
    if len(search) < 2 or not heldout:
        raise APIError(
            422,
            f"Too few labeled options items ({len(items)}): need at least 3 (search + held-out).",
            param="items",
        )
    config_m = settings.model_settings(model)
    upstream = (config_m.upstream or settings.upstream).rstrip("/")
    config = JobConfig(
        seeds=body.seeds,
        k=body.k,
        m=body.m,
        n=body.n,
        budget=body.budget,
        holdout_fraction=body.holdout_fraction,
        seed=body.seed,
        concurrency=body.concurrency,
        source="feedback" if body.from_feedback else "api",
        upstream=upstream,
        served_model=config_m.served_name or model,
        system_prompt_policy=config_m.system_prompt_policy,
        configured_prompt=config_m.system_prompt,
        paraphraser_url=(body.paraphraser.url or upstream).rstrip("/"),
        paraphraser_model=body.paraphraser.model or config_m.served_name or model,
        paraphraser_api=body.paraphraser.api,
    )
    job_id = await _store_call(create_job, store, model, body.task, config, search, heldout)
    _start(request, job_id, model)
    return _accepted(await _store_call(get_job, store, job_id))


async def _view(request: Request, job_id: str) -> dict[str, Any]:
    try:
        return await _store_call(get_job, request.app.state.store, job_id)
    except JobNotFound:
        raise APIError(404, f"No prompt optimization with id {job_id!r}.", param="id") from None


@router.get(
    "/v1/calibration/prompt-optimizations/{job_id}",
    summary="A prompt-optimization job: status, progress, history, result (admin).",
)
async def prompt_optimization_status(
    job_id: str, request: Request, _: Principal = Depends(require_admin)
) -> dict[str, Any]:
    return await _view(request, job_id)


@router.post(
    "/v1/calibration/prompt-optimizations/{job_id}/resume",
    summary="Resume a failed or interrupted prompt-optimization job (admin).",
    status_code=202,
)
async def resume_prompt_optimization(
    job_id: str, request: Request, _: Principal = Depends(require_admin)
) -> JSONResponse:
    view = await _view(request, job_id)
    if view["status"] in ("succeeded", "rejected"):
        raise APIError(409, f"Job {job_id} has already finished ({view['status']}).", param="id")
    task = next((t for t in _jobs(request) if t.get_name() == f"prompt-opt-{job_id}"), None)
    if task is not None and view["status"] == "failed":
        # The job has recorded its failure and is only releasing its lease: a client that saw
        # `failed` may resume at once, so wait for that instead of answering 409.
        await asyncio.wait({task}, timeout=_FINISHING_S)
    if task is not None and not task.done():
        raise APIError(409, f"Job {job_id} is running in this process.", param="id")
    await _store_call(mark_queued, request.app.state.store, job_id)
    _start(request, job_id, view["model"])
    return _accepted(await _view(request, job_id))
