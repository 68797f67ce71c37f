"""Start and stop what the demo needs: the embedded engine and a gateway, as real processes.

Both are launched through the `calib` command itself (`calib engine …`, `calib serve …`), so the
demo exercises exactly what a user runs; the demo only talks HTTP to them afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEFAULT_ENGINE_PORT = 8011
DEFAULT_VLM_PORT = 8012
VLM_MODEL = "tiny-vlm"


def _calib(*args: str) -> list[str]:
    return [sys.executable, "-m", "clients.cli", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(url):
            return
        if not alive():
            raise RuntimeError(f"process exited before {url} became healthy")
        time.sleep(0.25)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f} s")


@dataclass
class Stack:
    """What the demo started (and must stop) or found running (and must leave alone)."""

    out_dir: Path
    engine_url: str | None = None
    gateway_url: str | None = None
    engine_port: int | None = None
    gateway_process: subprocess.Popen[bytes] | None = None
    started_engine: bool = False
    vlm_url: str | None = None
    vlm_port: int | None = None
    started_vlm: bool = False
    log: Callable[[str], None] = print
    _log_files: list[object] = field(default_factory=list)

    def start_engine(self, engine_url: str | None) -> str:
        """Use `engine_url`, or a healthy engine on the default port, or prepare and start one."""
        if engine_url:
            self.engine_url = engine_url.rstrip("/")
        else:
            self.engine_url, self.engine_port = self._embedded(
                DEFAULT_ENGINE_PORT,
                (),
                "the engine",
                "the embedded engine (first run: installs vLLM CPU, converts Gemma)",
            )
            self.started_engine = self.engine_port is not None
        return self.engine_url

    def start_vlm(self, vlm_url: str | None) -> str:
        """Use `vlm_url`, or a healthy tiny VLM on its default port, or prepare and start it."""
        if vlm_url:
            self.vlm_url = vlm_url.rstrip("/")
        else:
            self.vlm_url, self.vlm_port = self._embedded(
                DEFAULT_VLM_PORT,
                ("--model", VLM_MODEL),
                "the tiny VLM",
                "the tiny VLM (first run: torchvision shim, assembles the LLaVA)",
            )
            self.started_vlm = self.vlm_port is not None
        return self.vlm_url

    def _embedded(
        self, default_port: int, model_args: tuple[str, ...], name: str, preparing: str
    ) -> tuple[str, int | None]:
        """(base URL, port we started it on or None): a healthy engine on `default_port`, or
        one prepared and started by `calib engine`."""
        default = f"http://127.0.0.1:{default_port}"
        if healthy(f"{default}/health"):
            self.log(f"using {name} already running at {default}/v1")
            return f"{default}/v1", None
        self.log(f"preparing {preparing}")
        subprocess.run(_calib("engine", "prepare", *model_args), check=True)
        port = default_port if _port_free(default_port) else free_port()
        subprocess.run(_calib("engine", "start", *model_args, "--port", str(port)), check=True)
        return f"http://127.0.0.1:{port}/v1", port

    def start_gateway(self, config_file: Path, db_url: str, port: int | None = None) -> str:
        port = port or free_port()
        assert self.engine_url is not None
        log_file = (self.out_dir / "gateway.log").open("ab")
        self._log_files.append(log_file)
        env = {**os.environ, "CALIB_DATA_DIR": str(self.out_dir)}
        self.gateway_process = subprocess.Popen(
            _calib(
                "serve",
                "--port",
                str(port),
                "--upstream",
                self.engine_url,
                "--db",
                db_url,
                "--config",
                str(config_file),
                "--log-level",
                "warning",
            ),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        process = self.gateway_process
        wait_healthy(f"{url}/healthz", 60, alive=lambda: process.poll() is None)
        self.gateway_url = url
        return url

    def stop(self) -> None:
        """Stop what this demo started; leave anything it found running alone."""
        if self.gateway_process is not None and self.gateway_process.poll() is None:
            self.gateway_process.send_signal(signal.SIGTERM)
            try:
                self.gateway_process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.gateway_process.kill()
        self.gateway_process = None
        if self.started_engine and self.engine_port is not None:
            subprocess.run(_calib("engine", "stop", "--port", str(self.engine_port)), check=False)
            self.started_engine = False
        if self.started_vlm and self.vlm_port is not None:
            subprocess.run(_calib("engine", "stop", "--port", str(self.vlm_port)), check=False)
            self.started_vlm = False
        for handle in self._log_files:
            handle.close()  # type: ignore[attr-defined]
        self._log_files.clear()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
