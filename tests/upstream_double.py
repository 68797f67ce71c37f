"""A controllable stand-in for the vLLM OpenAI server: a real HTTP server on loopback.

It is not a mock of our code: the gateway talks to it over TCP exactly as it talks to vLLM. Each
test decides what it answers by setting `double.reply` to one of the reply types below (or to a
callable `(path, json_body) -> reply`); every request it receives is recorded in
`double.requests`, so tests can assert what the gateway injected.

Reply types:
- `JSONReply(body, status)`: a JSON body (a chat/completions response, an error, anything);
- `RawReply(content, status, content_type)`: arbitrary bytes ("garbage");
- `StreamReply(events, done=True, drop=False)`: server-sent events, one per item: a dict (sent
  as `data: <json>`), `Pause(seconds)`, or a `Gate` the test opens; `drop=True` cuts the
  connection after the events instead of finishing the stream;
- `Stall(seconds, then)`: wait before answering (to test timeouts);
- `Drop()`: announce a body, send half of it and cut the connection.
- `Await(condition, then)`: answer `then` only once `condition(double.requests)` holds (or
  after `timeout`, counted in `double.await_timeouts`) — to prove two requests were in flight
  together without measuring time.

`vision_reply(...)` answers like a VLM whose option logprobs depend on the image: a clear
picture gives a confident answer, a uniform (blank) image a flat distribution (`image_kind`).

Set `double.api_key` to make it behave like `vllm serve --api-key KEY`: every `/v1` request
without `Authorization: Bearer KEY` is answered 401 `{"error": "Unauthorized"}` (vLLM's exact
reply) and counted in `double.unauthorized`.

Builders (`chat_response`, `completion_response`, `chat_steps`, `legacy_steps`, `chat_stream`,
`completion_stream`, and `chat_choices`, `completion_choices`, `chat_choices_stream` for
several choices that differ) produce bodies in vLLM's exact shapes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

__all__ = [
    "Await",
    "Drop",
    "Gate",
    "JSONReply",
    "Pause",
    "RawReply",
    "RecordedRequest",
    "ServerThread",
    "Stall",
    "StreamReply",
    "UpstreamDouble",
    "chat_choices",
    "chat_choices_stream",
    "chat_response",
    "chat_steps",
    "chat_stream",
    "completion_choices",
    "completion_response",
    "completion_stream",
    "image_kind",
    "legacy_steps",
    "vision_reply",
]

_ids = itertools.count(1)

# ------------------------------------------------------------------------------ replies


@dataclass
class JSONReply:
    body: Any
    status: int = 200


@dataclass
class RawReply:
    content: bytes
    status: int = 200
    content_type: str = "text/plain"


@dataclass
class Pause:
    seconds: float


@dataclass
class Gate:
    """A point in a stream where the double waits until the test calls `open()`.

    `abandoned` is set when the gateway closes the connection while the double waits here
    (the stream then ends)."""

    timeout: float = 10.0
    _event: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False

    def open(self) -> None:
        self._event.set()


@dataclass
class StreamReply:
    events: list[Any]
    done: bool = True
    drop: bool = False
    status: int = 200


@dataclass
class Stall:
    seconds: float
    then: Any = None


@dataclass
class Drop:
    pass


@dataclass
class Await:
    condition: Callable[[list[Any]], bool]
    then: Any
    timeout: float = 5.0


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw) if self.raw else None


# ----------------------------------------------------------------------------- builders

Step = tuple[str, float, list[tuple[str, float]]]  # (token, logprob, [(alt, logprob), ...])


def chat_steps(steps: list[Step]) -> dict[str, Any]:
    """Chat `logprobs` object from (token, logprob, top alternatives) steps."""
    content = []
    for token, lp, top in steps:
        content.append(
            {
                "token": token,
                "logprob": lp,
                "bytes": list(token.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top
                ],
            }
        )
    return {"content": content}


def legacy_steps(steps: list[Step]) -> dict[str, Any]:
    """Legacy completions `logprobs` object from the same steps."""
    offsets, pos = [], 0
    for token, _, _ in steps:
        offsets.append(pos)
        pos += len(token)
    return {
        "tokens": [t for t, _, _ in steps],
        "token_logprobs": [lp for _, lp, _ in steps],
        "top_logprobs": [dict(top) for _, _, top in steps],
        "text_offset": offsets,
    }


def _next_id(prefix: str) -> str:
    """Unique in the test process and the same from run to run: a refit splits fit/held-out by
    a hash of the ids, so ids with a clock in them made refit outcomes change per run."""
    return f"{prefix}-double-{next(_ids)}"


def chat_response(
    steps: list[Step] | None,
    *,
    model: str = "test-model",
    content: str | None = None,
    n: int = 1,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A chat completion; `steps=None` answers without logprobs (`content` must then be given)."""
    text = content if content is not None else "".join(t for t, _, _ in steps or ())
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text, "reasoning_content": None},
        "logprobs": chat_steps(steps) if steps is not None else None,
        "finish_reason": "stop",
        "stop_reason": None,
    }
    choices = [{**json.loads(json.dumps(choice)), "index": i} for i in range(n)]
    body = {
        "id": _next_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": 10, "completion_tokens": len(steps or ()), "total_tokens": 11},
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }
    body.update(extra or {})
    return body


def completion_response(
    steps: list[Step] | None, *, model: str = "test-model", text: str | None = None
) -> dict[str, Any]:
    """A legacy text completion."""
    return {
        "id": _next_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text if text is not None else "".join(t for t, _, _ in steps or ()),
                "logprobs": legacy_steps(steps) if steps is not None else None,
                "finish_reason": "stop",
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(steps or ()), "total_tokens": 6},
    }


def chat_stream(
    steps: list[Step], *, model: str = "test-model", logprobs: bool = True
) -> list[dict[str, Any]]:
    """Chat chunks as vLLM streams them: a role chunk, one chunk per token, a finish chunk."""
    cid, created = _next_id("chatcmpl"), int(time.time())

    def chunk(delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> dict:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    for step in steps:
        events.append(chunk({"content": step[0]}, chat_steps([step]) if logprobs else None))
    events.append(chunk({}, None, "stop"))
    return events


def completion_stream(steps: list[Step], *, model: str = "test-model") -> list[dict[str, Any]]:
    cid, created = _next_id("cmpl"), int(time.time())
    events = []
    for i, step in enumerate(steps):
        events.append(
            {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "text": step[0],
                        "logprobs": legacy_steps([step]),
                        "finish_reason": "stop" if i == len(steps) - 1 else None,
                    }
                ],
            }
        )
    return events


def chat_choices(per_choice: list[list[Step]], *, model: str = "test-model") -> dict[str, Any]:
    """A chat completion with one choice per steps list (`n > 1` with different answers)."""
    body = chat_response(per_choice[0], model=model, n=len(per_choice))
    for choice, steps in zip(body["choices"], per_choice, strict=True):
        choice["message"]["content"] = "".join(t for t, _, _ in steps)
        choice["logprobs"] = chat_steps(steps)
    body["usage"]["completion_tokens"] = sum(len(steps) for steps in per_choice)
    return body


def completion_choices(per_choice: list[list[Step]], *, model: str = "test-model") -> dict:
    """A text completion with one choice per steps list (`n > 1` or a list of prompts)."""
    body = completion_response(per_choice[0], model=model)
    template = body["choices"][0]
    body["choices"] = [
        {
            **json.loads(json.dumps(template)),
            "index": i,
            "text": "".join(t for t, _, _ in steps),
            "logprobs": legacy_steps(steps),
        }
        for i, steps in enumerate(per_choice)
    ]
    return body


def chat_choices_stream(
    per_choice: list[list[Step]], *, model: str = "test-model", usage: bool = False
) -> list[dict[str, Any]]:
    """Chat chunks of several choices, interleaved token by token as vLLM streams `n > 1`;
    each choice's last token chunk carries its `finish_reason`; `usage`: the final usage chunk
    (`stream_options.include_usage`)."""
    cid, created = _next_id("chatcmpl"), int(time.time())

    def chunk(index: int, delta: dict[str, Any], lp: Any, finish: str | None) -> dict:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        }

    events = [
        chunk(i, {"role": "assistant", "content": ""}, None, None) for i in range(len(per_choice))
    ]
    for position in range(max(len(steps) for steps in per_choice)):
        for i, steps in enumerate(per_choice):
            if position < len(steps):
                step = steps[position]
                finish = "stop" if position == len(steps) - 1 else None
                events.append(chunk(i, {"content": step[0]}, chat_steps([step]), finish))
    if usage:
        completion = sum(len(steps) for steps in per_choice)
        events.append(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": 10,
                    "total_tokens": 10 + completion,
                    "completion_tokens": completion,
                },
            }
        )
    return events


def softmax(logprobs: list[float], temperature: float = 1.0) -> list[float]:
    """Reference softmax (tests compare the gateway against it)."""
    scaled = [v / temperature for v in logprobs]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    return [e / sum(exps) for e in exps]


# ------------------------------------------------------------------------------ servers


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread on a free loopback port."""

    def __init__(self, app: Any, **config: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config.setdefault("log_level", "warning")
        config.setdefault("timeout_graceful_shutdown", 2)
        self.server = uvicorn.Server(uvicorn.Config(app, **config))
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"uvicorn-{self.port}")
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as exc:  # surfaced by start()
            self.error = exc

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.error!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self._sock.close()


class UpstreamDouble:
    """The controllable upstream; `base_url` ends in `/v1` like vLLM's."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.reply: Any = None
        self.known_models: set[str] | None = None
        self.models = ["test-model"]
        #: When set, what `GET /v1/models` answers (else the `models` list, or `reply` when that
        #: is a JSON/raw/stall reply).
        self.models_reply: Any = None
        self.api_key: str | None = None
        self.unauthorized = 0
        self.await_timeouts = 0
        self._server = ServerThread(self._app, interface="asgi3")

    @property
    def base_url(self) -> str:
        return f"{self._server.url}/v1"

    def start(self) -> UpstreamDouble:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        self.requests.clear()
        self.reply = None
        self.known_models = None
        self.models_reply = None
        self.api_key = None
        self.unauthorized = 0
        self.await_timeouts = 0

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    # -- the ASGI app ------------------------------------------------------------------

    async def _app(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        self.requests.append(RecordedRequest(scope["method"], path, headers, raw))
        bearer = headers.get("authorization")
        if (
            self.api_key is not None
            and path.startswith("/v1")
            and bearer != f"Bearer {self.api_key}"
        ):
            self.unauthorized += 1
            await self._send(send, JSONReply({"error": "Unauthorized"}, 401))
            return

        if scope["method"] == "GET" and path == "/v1/models":
            reply = self.reply if isinstance(self.reply, (JSONReply, RawReply, Stall)) else None
            reply = self.models_reply or reply
            reply = reply or JSONReply(
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "double"}
                        for m in self.models
                    ],
                }
            )
            await self._send(send, reply)
            return
        if scope["method"] != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            await self._send(send, JSONReply({"error": {"message": "Not Found"}}, 404))
            return

        try:
            body = json.loads(raw)
        except ValueError:
            await self._send(send, JSONReply(_error("bad json", 400), 400))
            return
        if self.known_models is not None and body.get("model") not in self.known_models:
            message = f"The model `{body.get('model')}` does not exist."
            await self._send(send, JSONReply(_error(message, 404, "NotFoundError"), 404))
            return
        reply = self.reply
        if callable(reply):
            reply = reply(path, body)
        if reply is None:
            reply = _default(path, body)
        await self._send(send, reply, receive)

    async def _send(self, send: Callable, reply: Any, receive: Callable | None = None) -> None:
        if isinstance(reply, Await):
            deadline = time.monotonic() + reply.timeout
            while not reply.condition(list(self.requests)):
                if time.monotonic() > deadline:
                    self.await_timeouts += 1
                    break
                await asyncio.sleep(0.005)
            reply = reply.then
        if isinstance(reply, Stall):
            await asyncio.sleep(reply.seconds)
            reply = reply.then or JSONReply({"late": True})
        if isinstance(reply, JSONReply):
            await _respond(send, reply.status, "application/json", json.dumps(reply.body).encode())
        elif isinstance(reply, RawReply):
            await _respond(send, reply.status, reply.content_type, reply.content)
        elif isinstance(reply, Drop):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"400"),
                    ],
                }
            )
            await send(
                {"type": "http.response.body", "body": b'{"id": "x", "cho', "more_body": True}
            )
            raise ConnectionAbortedError("double: dropping the connection on purpose")
        elif isinstance(reply, StreamReply):
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            for event in reply.events:
                if isinstance(event, Pause):
                    await asyncio.sleep(event.seconds)
                    continue
                if isinstance(event, Gate):
                    event.reached.set()
                    opened = asyncio.ensure_future(
                        asyncio.to_thread(event._event.wait, event.timeout)
                    )
                    gone = asyncio.ensure_future(_disconnect(receive)) if receive else None
                    await asyncio.wait({opened, gone} - {None}, return_when="FIRST_COMPLETED")
                    if gone is not None and gone.done():
                        event.abandoned.set()
                        return
                    if gone is not None:
                        gone.cancel()
                    event.timed_out = not opened.result()
                    continue
                data = event if isinstance(event, str) else json.dumps(event)
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"data: {data}\n\n".encode(),
                        "more_body": True,
                    }
                )
            if reply.drop:
                raise ConnectionAbortedError("double: dropping the stream on purpose")
            tail = b"data: [DONE]\n\n" if reply.done else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        else:  # pragma: no cover - a test bug
            raise TypeError(f"unknown reply {reply!r}")


async def _disconnect(receive: Callable) -> None:
    """Return once the client (the gateway) has closed the connection."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(send: Callable, status: int, content_type: str, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error(message: str, status: int, type: str = "BadRequestError") -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": None, "code": status}}


_DEFAULT_STEPS: list[Step] = [
    ("Paris", -0.05, [("Paris", -0.05), ("Lyon", -3.2)]),
    (".", -0.01, [(".", -0.01), ("!", -4.6)]),
]


def _default(path: str, body: dict[str, Any]) -> Any:
    """Without instructions: a short answer, with logprobs when asked for, like vLLM."""
    model = body.get("model", "test-model")
    legacy = path == "/v1/completions"
    wants = body.get("logprobs") is not None if legacy else bool(body.get("logprobs"))
    if body.get("stream"):
        if legacy:
            return StreamReply(completion_stream(_DEFAULT_STEPS, model=model))
        return StreamReply(chat_stream(_DEFAULT_STEPS, model=model, logprobs=wants))
    steps = _DEFAULT_STEPS if wants else None
    if legacy:
        return JSONReply(completion_response(steps, model=model, text="Paris."))
    return JSONReply(chat_response(steps, model=model, content="Paris."))


def image_kind(body: dict[str, Any]) -> str | None:
    """What the request's first image shows: "uniform" (one colour), "picture", or None (no
    data-URL image)."""
    import base64
    import io

    from PIL import Image

    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else ""
                if not url.startswith("data:"):
                    return None
                raw = base64.b64decode(url.split(",", 1)[1])
                with Image.open(io.BytesIO(raw)) as image:
                    one_colour = image.convert("RGB").getcolors(1) is not None
                return "uniform" if one_colour else "picture"
    return None


def vision_reply(
    answer: str = "A",
    options: tuple[str, ...] = ("A", "B", "C", "D"),
    *,
    confident: float = -0.1,
    token_logprob: Callable[[dict[str, Any]], float] | None = None,
    blank: Callable[[dict[str, Any]], list[float]] | None = None,
) -> Callable[[str, dict], Any]:
    """A VLM-like chat reply: with a picture, `answer` at `confident` and the other options far
    below; with a uniform image, every option at log(1/len(options)) (a flat distribution).

    Scoring requests (`prompt_logprobs`: the answer appended as the assistant's turn) get one
    prompt-logprob entry per word of that answer: `token_logprob(body)` if given, else -0.1 per
    token with a picture and -2.0 with a uniform image. `blank(body)`: the option probabilities
    with a uniform image instead of the flat ones (a model that half-ignores the image).
    """

    def reply(path: str, body: dict) -> Any:
        kind = image_kind(body)
        model = body.get("model", "test-model")
        if "prompt_logprobs" in body:
            text = body["messages"][-1]["content"]
            lp = token_logprob(body) if token_logprob else (-2.0 if kind == "uniform" else -0.1)
            words = text.split(" ")
            tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
            entries: list[Any] = [None, {"1": {"logprob": -1.0, "rank": 1, "decoded_token": "Q"}}]
            entries += [{str(10 + i): {"logprob": lp, "rank": 1, "decoded_token": t}}
                        for i, t in enumerate(tokens)]  # fmt: skip
            return JSONReply(chat_response(None, model=model, content="\n",
                                           extra={"prompt_logprobs": entries}))  # fmt: skip
        if kind == "uniform":
            probs = blank(body) if blank else [1 / len(options)] * len(options)
            top = [(o, math.log(p)) for o, p in zip(options, probs, strict=True)]
            best = max(range(len(options)), key=probs.__getitem__)
            steps: list[Step] = [(options[best], math.log(probs[best]), top)]
        else:
            top = [(o, confident if o == answer else confident - 4.0) for o in options]
            steps = [(answer, confident, top)]
        if body.get("stream"):
            return StreamReply(chat_stream(steps, model=model))
        return JSONReply(chat_response(steps, model=model))

    return reply


def _bench_reply(tokens: int, top: int) -> Callable[[str, dict], Any]:
    """A fixed realistic answer: `tokens` generated tokens with `top` alternatives each."""
    steps: list[Step] = [
        (
            f" t{i}",
            -0.1 * (i + 1),
            [(f" t{i}" if j == 0 else f" a{j}", -0.1 * (i + 1) - j) for j in range(top)],
        )
        for i in range(tokens)
    ]
    steps[0] = (
        " B",
        -0.3,
        [(" B", -0.3), (" A", -1.5), (" C", -2.5), (" D", -3.5), *steps[0][2][4:]],
    )

    def reply(path: str, body: dict) -> Any:
        model = body.get("model", "test-model")
        if path == "/v1/completions":
            return JSONReply(completion_response(steps, model=model))
        if body.get("stream"):
            return StreamReply(chat_stream(steps, model=model))
        return JSONReply(chat_response(steps, model=model))

    return reply


if __name__ == "__main__":  # python -m tests.upstream_double --port N (used by benchmarks)
    import argparse

    parser = argparse.ArgumentParser(description="Serve the upstream double (benchmarks).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    double = UpstreamDouble()
    double.reply = _bench_reply(args.tokens, args.top)
    uvicorn.run(
        double._app,
        host="127.0.0.1",
        port=args.port,
        interface="asgi3",
        log_level="warning",
        loop="uvloop",
        http="httptools",
    )
