"""The embedded models `calib engine` knows by name, and the settings that serve each one.

- ``gemma-3-270m`` (default): the text model, port 8011 (or `CALIB_ENGINE_*` settings);
- ``tiny-vlm``: the project's LLaVA on top of it (service/engine/vlm), served as `tiny-vlm` on
  port 8012 by default, so both can run at once.
"""

from __future__ import annotations

from service.engine.errors import NotPreparedError
from service.engine.paths import VLM_NAME, EngineLayout
from service.engine.settings import EngineSettings
from service.engine.vlm.prepare import SERVED_NAME, VLM_PORT, vlm_is_prepared

DEFAULT_MODEL = "gemma-3-270m"
MODELS: tuple[str, ...] = (DEFAULT_MODEL, VLM_NAME)
#: vLLM arguments of the VLM: one image per prompt, no audio/video profiling on CPU.
VLM_EXTRA_ARGS = "--limit-mm-per-prompt '{\"image\":1}'"


def settings_for(
    model: str, layout: EngineLayout, port: int | None = None, host: str | None = None
) -> EngineSettings:
    """Engine settings serving the embedded `model` (environment settings apply otherwise)."""
    if model not in MODELS:
        raise ValueError(f"unknown embedded model {model!r}; choose one of {', '.join(MODELS)}")
    overrides: dict[str, object] = {k: v for k, v in {"host": host}.items() if v is not None}
    if model == VLM_NAME:
        overrides |= {
            "model": str(layout.vlm_dir),
            "served_model_name": SERVED_NAME,
            "port": VLM_PORT if port is None else port,
        }
        settings = EngineSettings(**overrides)  # type: ignore[arg-type]
        extra = f"{VLM_EXTRA_ARGS} {settings.extra_args}".strip()
        return settings.model_copy(update={"extra_args": extra})
    if port is not None:
        overrides["port"] = port
    return EngineSettings(**overrides)  # type: ignore[arg-type]


def require_prepared(model: str, layout: EngineLayout) -> None:
    """Raise NotPreparedError with the command to run when the VLM is not built yet."""
    if model == VLM_NAME and not vlm_is_prepared(layout):
        raise NotPreparedError(
            "The tiny VLM is not prepared yet: run `calib engine prepare --model tiny-vlm` first."
        )
