"""An upstream double whose streams pause between chunks (held streams for load tests).

python -m tests.reliability.slow_stream_upstream --port N --chunks 10 --interval 1.0
"""

from __future__ import annotations

import argparse

import uvicorn

from tests.upstream_double import Pause, StreamReply, UpstreamDouble, chat_stream

STEP = (" B", -0.4, [(" B", -0.4), (" A", -1.6), (" C", -3.0), (" D", -4.2)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    double = UpstreamDouble()

    def reply(path: str, body: dict) -> StreamReply:
        events = chat_stream([STEP] * args.chunks, model=body.get("model", "m"))
        paced = [events[0]]
        for event in events[1:]:
            paced += [Pause(args.interval), event]
        return StreamReply(paced)

    double.reply = reply
    uvicorn.run(
        double._app,
        host="127.0.0.1",
        port=args.port,
        interface="asgi3",
        log_level="warning",
        backlog=4096,
        timeout_keep_alive=120,
    )


if __name__ == "__main__":
    main()
