"""The tiny VLM: a LLaVA the project builds from the embedded Gemma 3 270M (docs/engine.md).

`prepare_vlm` adds three steps on top of the text engine's prepare, each skipped when done:

- ``torchvision``: PyPI torchvision (CUDA build) without dependencies, plus a lazy import hook
  (`torchvision_shim.py`, installed as a `.pth`) that defines the two operator schemas its CUDA
  extension would have registered, so vLLM's image transforms import on the CPU torch;
- ``vlm-weights``: the vision tower + projector weights — the committed file
  (`tiny_vlm_vision.safetensors`, made by `train.py`), or trained now if it is missing;
- ``vlm-assemble``: the servable LLaVA folder (`assemble.py`).

The modules `model.py`, `train.py`, `assemble.py` and `torchvision_shim.py` run inside the engine
virtualenv (torch, transformers); this package's own code never imports them.
"""

from service.engine.vlm.prepare import (
    SERVED_NAME,
    TORCHVISION_REQUIREMENT,
    VLM_PORT,
    WEIGHTS_FILE,
    prepare_vlm,
    vlm_is_prepared,
)

__all__ = [
    "SERVED_NAME",
    "TORCHVISION_REQUIREMENT",
    "VLM_PORT",
    "WEIGHTS_FILE",
    "prepare_vlm",
    "vlm_is_prepared",
]
