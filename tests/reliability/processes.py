"""Real processes for reliability tests: `calib serve` as a subprocess, its memory, a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` from /proc (psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Serve:
    """`calib serve` in its own process (the way operators run it), on a free loopback port."""

    def __init__(
        self,
        tmp_path: Path,
        upstream: str,
        db: str,
        *,
        process_env: dict[str, str] | None = None,
        **env: object,
    ) -> None:
        """`env` becomes `CALIB_*` settings; `process_env` is passed as is (e.g. PYTHONMALLOC)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        environ = {**os.environ, **(process_env or {}), "CALIB_DATA_DIR": str(tmp_path)}
        environ.update({f"CALIB_{k.upper()}": str(v) for k, v in env.items()})
        command = [sys.executable, "-m", "clients.cli", "serve", "--port", str(self.port)]
        command += ["--upstream", upstream, "--db", db]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, env=environ, stdout=out, stderr=out)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> Serve:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"calib serve exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"calib serve not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()
