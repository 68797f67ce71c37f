"""The request path: one OpenAI (chat) completion from the socket to the answer.

How a request flows (docs/architecture.md, "Request path"):

1. `ProxyFastPath` (or the FastAPI route in service/routes/proxy.py) authenticates and calls
   `complete(request, principal, CHAT)`;
2. the body is parsed once and the fields the gateway touches are checked (`_body.py`);
3. the profile for (model, task) is fetched and the calibration plan resolved: request > profile
   > model configuration (`_plan.py`);
4. the body is rewritten for the upstream — logprobs calibration needs, the system prompt, the
   IDK choice, the upstream's model name — by the endpoint's serving object (`_serving.py`);
5. it is forwarded with the pooled client (`_upstream.py` over `_upstream_http.py`);
6. each choice is scored, calibrated and the abstain decision taken (`_confidence.py`), the
   logprobs trimmed back to the client's wish, `calibration` and the `x-calibration-*` headers
   attached, and the predictions handed to the write-behind writer (`_handler.py`).

The files a reader follows for one non-streamed chat completion, in order (7):

- `_handler.py`      — `ProxyFastPath`, `complete`: prepare → forward → finish
- `_body.py`         — parse the body, check its fields and image parts
- `_plan.py`         — the `calibration` object and the plan it resolves to
- `_serving.py`      — `CHAT` / `COMPLETIONS`: everything that differs between the endpoints
- `_upstream.py`     — the upstream client and its error mapping
- `_upstream_http.py`— the pooled HTTP/1.1 connection it sends on
- `_confidence.py`   — score, calibrate, abstain; each choice's id and generated part

Only when asked for: `_streaming.py` (`stream: true`), `_likelihood.py` (`scoring:
"likelihood"`), `_idk.py` (`add_idk_option`).
"""

from service.proxy._body import (
    LogprobWish,
    check_chat,
    check_completions,
    data_url_bytes,
    dumps,
    parse_json_body,
    validate_image_parts,
)
from service.proxy._confidence import Outcome, calibrate_choice, no_choice_outcome
from service.proxy._handler import ProxyFastPath, complete
from service.proxy._idk import choose_label, insert_in_messages, insert_in_prompt
from service.proxy._likelihood import completion_request, option_likelihoods, sum_option_logprobs
from service.proxy._plan import CalibrationPlan, CalibrationRequest, parse_calibration, resolve_plan
from service.proxy._serving import (
    CHAT,
    COMPLETIONS,
    OpenAIServing,
    ServingChat,
    ServingCompletion,
    inject_chat_logprobs,
    inject_completion_logprobs,
    inject_system_prompt,
    prefix_prompt,
    trim_chat_body,
    trim_chat_choice,
    trim_completion_choice,
    withhold_chat,
    withhold_completion,
)
from service.proxy._upstream import (
    Upstream,
    UpstreamReply,
    UpstreamTarget,
    UpstreamTransportError,
    error_kind,
    upstream_error_from,
)
from service.proxy._upstream_http import UpstreamHTTP, UpstreamResponse

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "CalibrationPlan",
    "CalibrationRequest",
    "LogprobWish",
    "OpenAIServing",
    "Outcome",
    "ProxyFastPath",
    "ServingChat",
    "ServingCompletion",
    "Upstream",
    "UpstreamHTTP",
    "UpstreamReply",
    "UpstreamResponse",
    "UpstreamTarget",
    "UpstreamTransportError",
    "calibrate_choice",
    "check_chat",
    "check_completions",
    "choose_label",
    "complete",
    "completion_request",
    "data_url_bytes",
    "dumps",
    "error_kind",
    "inject_chat_logprobs",
    "inject_completion_logprobs",
    "inject_system_prompt",
    "insert_in_messages",
    "insert_in_prompt",
    "no_choice_outcome",
    "option_likelihoods",
    "parse_calibration",
    "parse_json_body",
    "prefix_prompt",
    "resolve_plan",
    "sum_option_logprobs",
    "trim_chat_body",
    "trim_chat_choice",
    "trim_completion_choice",
    "upstream_error_from",
    "validate_image_parts",
    "withhold_chat",
    "withhold_completion",
]
