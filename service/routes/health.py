"""Liveness and readiness: `GET /healthz` (the process answers) and `GET /readyz`.

Readiness checks what a request needs: the store answers a ping and the upstream engine answers
`GET {upstream}/models`. Either failing gives 503 with an OpenAI-shaped error naming what failed,
plus a `checks` map, so a load balancer stops sending traffic and an operator sees why.

`/readyz?exclude=upstream` (kube-apiserver's spelling) checks the gateway's own readiness only:
the Kubernetes readinessProbe uses it, so an engine outage does not take every gateway pod out of
its Service; the pods keep answering, with 502/503/504 in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from service.errors import APIError, error_body

__all__ = ["router"]

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 3.0


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """200 while the process can answer HTTP."""
    return {"status": "ok"}


async def _check_store(request: Request) -> str:
    try:
        await asyncio.wait_for(
            asyncio.to_thread(request.app.state.store.ping), timeout=_CHECK_TIMEOUT_S
        )
    except TimeoutError:
        return "error: store ping timed out"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


async def _check_upstream(request: Request) -> str:
    try:
        upstream = request.app.state.upstream
        await upstream.get_json(upstream.default, "models", timeout=_CHECK_TIMEOUT_S)
    except APIError as exc:
        return f"error: HTTP {exc.status}: {exc.message}"[:300]
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


_CHECKS = ("store", "upstream")


@router.get("/readyz", summary="Readiness (store + upstream)")
async def readyz(
    request: Request,
    exclude: Annotated[
        list[str] | None,
        Query(description="Checks to skip, e.g. `upstream` for the gateway's own readiness."),
    ] = None,
) -> JSONResponse:
    """200 when the store and the upstream both answer, else 503 saying which did not."""
    exclude = exclude or []
    if unknown := sorted(set(exclude) - set(_CHECKS)):
        raise APIError(
            400,
            f"Unknown readiness check {', '.join(map(repr, unknown))}: "
            f"exclude takes {' or '.join(map(repr, _CHECKS))}",
            param="exclude",
            code="invalid_value",
        )
    runners = {"store": _check_store, "upstream": _check_upstream}
    names = [name for name in _CHECKS if name not in exclude]
    results = await asyncio.gather(*(runners[name](request) for name in names))
    checks = dict(zip(names, results, strict=True))
    failed = [name for name, status in checks.items() if status != "ok"]
    if not failed:
        return JSONResponse({"status": "ready", "checks": checks})
    message = "Not ready: " + "; ".join(f"{name} {checks[name]}" for name in failed)
    body = error_body(message, 503, code="not_ready")
    body["checks"] = checks
    return JSONResponse(body, status_code=503)
