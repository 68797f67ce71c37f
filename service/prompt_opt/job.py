"""A prompt-optimization job: create it, run it (or resume it), read its state.

State lives in the store (tables `prompt_opt_jobs` and `prompt_opt_evaluations`, migration 0004):

* the job row: configuration, the items with their search/held-out split (fixed at creation, so
  a resumed job replays the same items), the paraphrase calls so far, progress and the result;
* one evaluation row per (split, candidate), written right after the candidate is scored. Their
  primary key makes evaluating a candidate twice impossible; a resumed job reads them back and
  `calibrators.search_prompts` reuses them instead of calling the upstream again.

A job that dies (crash, upstream failure) stays `failed` (or `running`, if the process died) and
is resumed with `run_job(..., job_id)` — `calib optimize-prompt --resume ID` or
`POST /v1/calibration/prompt-optimizations/{id}/resume`. A lease (`prompt-opt:{id}`) keeps two
runners off the same job.

When the search ends, the best candidate and the prompt in use now are both scored on the
held-out items; only if the best beats it (accuracy bucket, then lower ECE: the search's own rule)
does it become the new active profile version, with the search history in the version's metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from calibrators import (
    Candidate,
    Evaluation,
    ParaphraseCall,
    Profile,
    better,
    normalize_prompt,
    search_prompts,
)
from service.prompt_opt.evaluation import Replayer
from service.prompt_opt.items import LabeledItem
from service.store import Store
from service.store.records import utcnow

__all__ = [
    "DEFAULT_SEEDS",
    "JobBusy",
    "JobConfig",
    "JobNotFound",
    "create_job",
    "get_job",
    "mark_queued",
    "run_job",
]

logger = logging.getLogger(__name__)

#: The paper's seeds.
DEFAULT_SEEDS = ("The answer might be", "The answer must be")
LEASE_TTL_S = 600.0


class JobNotFound(LookupError):
    pass


class JobBusy(RuntimeError):
    """Another runner holds this job's lease."""


@dataclass
class JobConfig:
    """What a job searches with (stored with the job)."""

    seeds: list[str] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    k: int = 5
    m: int = 5
    n: int = 10
    budget: int | None = None
    holdout_fraction: float = 0.3
    seed: int = 0
    concurrency: int = 8
    source: str = "dataset"  # "dataset" | "feedback" | "api"
    upstream: str = ""  # base URL the items are replayed against
    served_model: str = ""  # the model name the upstream knows
    system_prompt_policy: str = "prepend"
    configured_prompt: str | None = None  # the model configuration's static system prompt
    paraphraser_url: str = ""
    paraphraser_model: str = ""
    paraphraser_api: str = "completions"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _key(prompt: str | None) -> str:
    return hashlib.sha256(normalize_prompt(prompt or "").encode()).hexdigest()


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


# ------------------------------------------------------------------------------ store access


def create_job(
    store: Store,
    model: str,
    task: str,
    config: JobConfig,
    search: list[LabeledItem],
    heldout: list[LabeledItem],
) -> str:
    """Store a new job (status `queued`) and return its id."""
    if not search or not heldout:
        raise ValueError("need labeled items in both the search and the held-out split")
    job_id = f"popt-{secrets.token_hex(8)}"
    now = utcnow()
    items = {"search": [i.to_dict() for i in search], "heldout": [i.to_dict() for i in heldout]}
    state = {"phase": "queued", "paraphrases": [], "evaluations": 0, "result": None}
    store.prompt_jobs.create_job(
        id=job_id,
        model=model,
        task=task,
        status="queued",
        config=config.to_dict(),
        items=items,
        state=state,
        created_at=now,
        updated_at=now,
    )
    return job_id


def _row(store: Store, job_id: str) -> Any:
    row = store.prompt_jobs.get_job(job_id)
    if row is None:
        raise JobNotFound(job_id)
    return row


def _evaluations(store: Store, job_id: str) -> list[Any]:
    return store.prompt_jobs.evaluations(job_id)


def _update(store: Store, job_id: str, **values: Any) -> None:
    store.prompt_jobs.update_job(job_id, **values)


def _insert_evaluation(
    store: Store, job_id: str, split: str, prompt: str | None, result: Evaluation, **extra: Any
) -> None:
    store.prompt_jobs.add_evaluation(
        job_id,
        split=split,
        prompt_key=_key(prompt),
        prompt=prompt or "",
        accuracy=float(result.accuracy),
        ece=_finite(float(result.ece)),
        n=int(result.n),
        round=extra.get("round", -1),
        ord=extra.get("order", -1),
        parent=extra.get("parent"),
    )


def mark_queued(store: Store, job_id: str) -> None:
    """A job about to be (re)started: `queued`, error cleared (what a poller sees first)."""
    _row(store, job_id)
    _update(store, job_id, status="queued", error=None)


def get_job(store: Store, job_id: str) -> dict[str, Any]:
    """The job as the API shows it: status, progress, history, result."""
    row = _row(store, job_id)
    config = JobConfig.from_dict(row["config"])
    state = row["state"] or {}
    rows = _evaluations(store, job_id)
    search = sorted((r for r in rows if r["split"] == "search"), key=lambda r: r["ord"])
    history = [
        {
            "prompt": r["prompt"],
            "accuracy": r["accuracy"],
            "ece": r["ece"],
            "n": r["n"],
            "round": r["round"],
            "parent": r["parent"],
        }
        for r in search
    ]
    if config.budget is not None:
        planned = config.budget
    else:
        planned = len(config.seeds) + config.n * config.k * config.m
    return {
        "object": "calibration.prompt_optimization",
        "id": job_id,
        "model": row["model"],
        "task": row["task"],
        "status": row["status"],
        "error": row["error"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        "config": {
            k: v for k, v in config.to_dict().items() if k not in ("upstream", "paraphraser_url")
        },
        "items": {"search": len(row["items"]["search"]), "heldout": len(row["items"]["heldout"])},
        "progress": {
            "phase": state.get("phase"),
            "round": max((h["round"] for h in history), default=0),
            "evaluations": len(history),
            "planned_evaluations": planned,
        },
        "history": history,
        "result": state.get("result"),
    }


# ------------------------------------------------------------------------------ running


ProgressFn = Callable[[dict[str, Any]], None]


async def run_job(
    store: Store,
    job_id: str,
    *,
    client: Any,
    paraphraser: Callable[[str, int], Any] | None = None,
    on_progress: ProgressFn | None = None,
    on_activated: Callable[[str, str], None] | None = None,
    fail_after: int | None = None,
    upstream_keys: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the job to the end; returns `get_job`'s view. Raises on failure, after
    recording it (status `failed`, `error`), so the job can be resumed.

    ``client`` is an ``httpx.AsyncClient``; ``paraphraser`` an async ``(prompt, m) -> list``
    (default: `Paraphraser` on the job's configured endpoint). ``fail_after`` makes the job
    raise after that many new evaluations (for crash tests and drills). ``upstream_keys`` maps
    base URLs to bearer keys (`Settings.upstream_keys`): the replay and the paraphraser send the
    key of the URL they call, and nothing to any other URL. Keys are never stored with the job.
    """
    from service.prompt_opt.paraphraser import Paraphraser

    row = await asyncio.to_thread(_row, store, job_id)
    if row["status"] in ("succeeded", "rejected"):
        return await asyncio.to_thread(get_job, store, job_id)
    model, task = row["model"], row["task"]
    config = JobConfig.from_dict(row["config"])
    search_items = [LabeledItem.from_dict(d) for d in row["items"]["search"]]
    heldout_items = [LabeledItem.from_dict(d) for d in row["items"]["heldout"]]
    state = dict(row["state"] or {})

    holder = f"{socket.gethostname()}:{secrets.token_hex(4)}"
    lease = f"prompt-opt:{job_id}"
    if not await asyncio.to_thread(store.acquire_lease, lease, holder, LEASE_TTL_S):
        raise JobBusy(f"prompt optimization {job_id} is being run elsewhere")

    keys = {url.rstrip("/"): key for url, key in (upstream_keys or {}).items()}
    replayer = Replayer(
        client,
        config.upstream,
        config.served_model or model,
        policy=config.system_prompt_policy,
        concurrency=config.concurrency,
        api_key=keys.get(config.upstream.rstrip("/")),
    )
    if paraphraser is None:
        paraphraser_url = (config.paraphraser_url or config.upstream).rstrip("/")
        paraphraser = Paraphraser(
            client,
            paraphraser_url,
            config.paraphraser_model or config.served_model or model,
            api=config.paraphraser_api,
            api_key=keys.get(paraphraser_url),
        )
    loop = asyncio.get_running_loop()
    fresh = 0

    def progress(phase: str) -> None:
        if on_progress is not None:
            on_progress({"phase": phase, "evaluations": len(history), "state": state})

    previous = await asyncio.to_thread(_evaluations, store, job_id)
    history = [
        Candidate(r["prompt"], r["accuracy"], r["ece"] if r["ece"] is not None else math.nan,
                  r["n"], r["round"], r["ord"], r["parent"])
        for r in sorted((r for r in previous if r["split"] == "search"), key=lambda r: r["ord"])
    ]  # fmt: skip
    heldout_done = {r["prompt_key"]: r for r in previous if r["split"] == "heldout"}
    calls = [ParaphraseCall.from_dict(d) for d in state.get("paraphrases") or []]

    def evaluate(prompt: str) -> Evaluation:  # runs in the search thread
        nonlocal fresh
        if fail_after is not None and fresh >= fail_after:
            raise RuntimeError(f"simulated crash after {fail_after} evaluations")
        result = asyncio.run_coroutine_threadsafe(
            replayer.evaluate(search_items, prompt), loop
        ).result()
        fresh += 1
        return result

    def paraphrase(prompt: str, m: int) -> list[str]:
        return asyncio.run_coroutine_threadsafe(paraphraser(prompt, m), loop).result()

    def saved_evaluation(candidate: Candidate) -> None:
        _insert_evaluation(
            store, job_id, "search", candidate.prompt,
            Evaluation(candidate.accuracy, candidate.ece, candidate.n),
            round=candidate.round, order=candidate.order, parent=candidate.parent,
        )  # fmt: skip
        history.append(candidate)
        state["evaluations"] = len(history)
        _update(store, job_id, state=dict(state))
        store.acquire_lease(lease, holder, LEASE_TTL_S)
        progress("search")

    def saved_paraphrases(call: ParaphraseCall) -> None:
        state["paraphrases"] = [*state.get("paraphrases", []), call.to_dict()]
        _update(store, job_id, state=dict(state))

    try:
        state["phase"] = "search"
        await asyncio.to_thread(
            _update, store, job_id, status="running", error=None, state=dict(state)
        )
        progress("search")
        result = await asyncio.to_thread(
            search_prompts,
            config.seeds,
            paraphrase,
            evaluate,
            k=config.k,
            m=config.m,
            n=config.n,
            budget=config.budget,
            history=list(history),
            paraphrases=calls,
            on_evaluation=saved_evaluation,
            on_paraphrases=saved_paraphrases,
        )

        # Held-out comparison: the winner against what is served now.
        state["phase"] = "heldout"
        progress("heldout")
        active = await asyncio.to_thread(_served_prompt, store, model, task, config)

        async def heldout(prompt: str | None) -> Evaluation:
            stored = heldout_done.get(_key(prompt))
            if stored is not None:
                ece = stored["ece"] if stored["ece"] is not None else math.nan
                return Evaluation(stored["accuracy"], ece, stored["n"])
            evaluation = await replayer.evaluate(heldout_items, prompt)
            await asyncio.to_thread(
                _insert_evaluation, store, job_id, "heldout", prompt, evaluation
            )
            heldout_done[_key(prompt)] = {
                "accuracy": evaluation.accuracy, "ece": evaluation.ece, "n": evaluation.n,
            }  # fmt: skip
            return evaluation

        best_h = await heldout(result.best.prompt)
        active_h = await heldout(active)
        outcome = await asyncio.to_thread(
            _decide, store, job_id, model, task, result, best_h, active, active_h
        )
        if outcome["activated"] and on_activated is not None:
            on_activated(model, task)
        state.update(phase="done", result=outcome)
        status = "succeeded" if outcome["activated"] else "rejected"
        await asyncio.to_thread(
            _update, store, job_id, status=status, state=dict(state), finished_at=utcnow()
        )
        progress("done")
        return await asyncio.to_thread(get_job, store, job_id)
    except BaseException as error:
        message = f"{type(error).__name__}: {error}"
        logger.warning("prompt optimization %s stopped: %s", job_id, message)
        try:
            await asyncio.shield(
                asyncio.to_thread(_update, store, job_id, status="failed", error=message[:2000])
            )
        except Exception:  # the store being down is reported by the original error
            logger.exception("could not record the failure of %s", job_id)
        raise
    finally:
        try:
            await asyncio.to_thread(store.release_lease, lease, holder)
        except Exception:
            logger.exception("could not release lease %s", lease)


def _served_prompt(store: Store, model: str, task: str, config: JobConfig) -> str | None:
    profile = store.active_profile(model, task)
    served = profile.system_prompt if profile is not None else None
    return served or config.configured_prompt or None


def _evaluation_dict(e: Evaluation) -> dict[str, Any]:
    return {"accuracy": e.accuracy, "ece": _finite(e.ece), "n": e.n}


def _decide(
    store: Store,
    job_id: str,
    model: str,
    task: str,
    result: Any,
    best: Evaluation,
    active_prompt: str | None,
    active: Evaluation,
) -> dict[str, Any]:
    """Activate the winner as a new profile version if it beats the served prompt held out."""
    summary: dict[str, Any] = {
        "best_prompt": result.best.prompt,
        "search": {
            "accuracy": result.best.accuracy,
            "ece": _finite(result.best.ece),
            "round": result.best.round,
            "evaluations": len(result.history),
            "stopped": result.stopped,
        },
        "heldout": {"best": _evaluation_dict(best), "active": _evaluation_dict(active)},
        "active_prompt": active_prompt,
        "activated": False,
        "version": None,
    }
    if normalize_prompt(result.best.prompt) == normalize_prompt(active_prompt or ""):
        summary["reason"] = "the best prompt is the one already in use"
        return summary
    if not better(best, active):
        summary["reason"] = (
            f"held-out: the best prompt (accuracy {best.accuracy:.3f}, ECE {best.ece:.3f}) does "
            f"not beat the prompt in use (accuracy {active.accuracy:.3f}, ECE {active.ece:.3f})"
        )
        return summary
    base = store.active_profile(model, task) or Profile.identity(model, task)
    history = [c.to_dict() for c in result.history]
    metrics = {**(base.metrics or {}), "prompt_optimization": {**summary, "job": job_id}}
    profile = dataclasses.replace(
        base,
        system_prompt=result.best.prompt,
        metrics=metrics,
        notes=f"system prompt from prompt optimization {job_id}",
    )
    reason = (
        f"prompt optimization {job_id}: held-out accuracy {active.accuracy:.3f} -> "
        f"{best.accuracy:.3f}, ECE {active.ece:.3f} -> {best.ece:.3f}"
    )
    saved = store.save_profile(
        profile,
        activate=True,
        reason=reason,
        metrics={**metrics, "prompt_optimization": {**summary, "job": job_id, "history": history}},
    )
    summary.update(activated=True, version=saved.version, reason=reason)
    return summary
