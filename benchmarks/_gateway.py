"""The real gateway app on a loopback port, in a background thread of the benchmark's process.

The evaluation scripts measure through the gateway (so calibration, refits and the store are the
real ones) while reading its state directly (`app.state.services`), which a subprocess would not
allow.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from service.app import create_app
from service.settings import Settings

__all__ = ["InThreadGateway"]


class InThreadGateway:
    """`with InThreadGateway(settings) as url:` — `url` is the gateway's root, plus `/v1` when
    `api_root` (an OpenAI base URL)."""

    def __init__(self, settings: Settings, *, api_root: bool = False) -> None:
        self.settings = settings
        self._suffix = "/v1" if api_root else ""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}{self._suffix}"

    @classmethod
    def for_engine(
        cls, engine: str, data_dir: Path, *, api_root: bool = False, **settings: Any
    ) -> InThreadGateway:
        """In front of `engine` with a store in `data_dir`: no scheduled refits (the script asks
        for them), no API keys (loopback only); `settings` add to those."""
        defaults: dict[str, Any] = {"refit_enabled": False, "insecure": True}
        config = Settings(upstream=engine, data_dir=data_dir, **(defaults | settings))
        return cls(config, api_root=api_root)

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
