"""`GET /v1/models` as clients should see it: the names they send, every configured model.

The upstream lists the names *it* knows. Through the gateway a model is addressed by its key in
`models` (a `served_name` is what the upstream knows it as), and some models live on another
upstream. So the list is built from every upstream the configuration names (each asked with its
own key, concurrently):

* an upstream entry whose id is a configured model's `served_name` is listed under the
  configured name (one entry per name; the upstream's other fields are kept);
* other entries of the global upstream are listed unchanged (requests for them are forwarded
  as they are); other entries of a per-model upstream are not (a request for that name would go
  to the global upstream);
* a configured model no upstream lists still appears, as a minimal OpenAI model object
  (`owned_by: "mllm-calib"`), so the configuration is discoverable.

The global upstream failing fails the request as before (502/504 in OpenAI's shape); a per-model
upstream failing only drops its details (logged), never the list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

from service.errors import APIError
from service.proxy import Upstream, UpstreamTarget
from service.settings import Settings

__all__ = ["list_models"]

logger = logging.getLogger(__name__)


async def list_models(upstream: Upstream, settings: Settings) -> dict[str, Any]:
    """The gateway's model list (an OpenAI `list` object)."""
    targets: dict[UpstreamTarget, None] = {upstream.default: None}
    # base URL -> the upstream's name -> the client-facing names it is served under
    names: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, config in settings.models.items():
        target = upstream.target(config)
        targets[target] = None
        names[target.base][config.served_name or name].append(name)

    order = list(targets)
    replies = await asyncio.gather(
        *(upstream.get_json(target, "models") for target in order), return_exceptions=True
    )
    default_reply = replies[0]
    if isinstance(default_reply, BaseException):
        raise default_reply

    listed: dict[str, dict[str, Any]] = {}
    for target, reply in zip(order, replies, strict=True):
        if isinstance(reply, BaseException):
            if not isinstance(reply, APIError):
                raise reply
            logger.warning("model list of upstream %s unavailable: %s", target.base, reply.message)
            continue
        aliases = names.get(target.base, {})
        for entry in _entries(reply.body):
            served = entry["id"]
            if served in aliases:
                for name in aliases[served]:
                    listed.setdefault(name, {**entry, "id": name})
            elif target is upstream.default:
                listed.setdefault(served, entry)

    created = int(time.time())
    for name in settings.models:
        listed.setdefault(
            name, {"id": name, "object": "model", "created": created, "owned_by": "mllm-calib"}
        )
    body = default_reply.body if isinstance(default_reply.body, dict) else {}
    return {**body, "object": "list", "data": list(listed.values())}


def _entries(body: Any) -> list[dict[str, Any]]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]
