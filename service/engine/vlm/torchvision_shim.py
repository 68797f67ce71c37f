"""Installed into the engine virtualenv as `calib_torchvision_shim` (loaded by a `.pth` file).

PyPI's torchvision wheel is a CUDA build: its `_C` extension does not load against the CPU torch,
so `import torchvision` fails while registering fake kernels for `torchvision::nms` and
`torchvision::qnms` ("operator ... does not exist"). vLLM's multimodal models import torchvision
(image transforms only, never those operators). Defining the two operator schemas before
torchvision's first import lets its pure-Python parts load and work.

The hook is lazy: it only imports torch when something imports torchvision, so every other
interpreter start in the virtualenv (pip, the text-only engine) stays as fast as before.
"""

from __future__ import annotations

import importlib.abc
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARIES: list[object] = []  # keep the torch.library.Library objects alive


def define_torchvision_ops() -> None:
    """Define `torchvision::nms`/`qnms` unless torchvision's own extension already did."""
    import torch

    missing = [name for name in _SCHEMAS if not _has_op(torch, name)]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for name in missing:
        lib.define(_SCHEMAS[name])
    _LIBRARIES.append(lib)


def _has_op(torch: object, name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return False
    return True


class _Finder(importlib.abc.MetaPathFinder):
    """Runs `define_torchvision_ops` once, just before the first `import torchvision`."""

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            define_torchvision_ops()
        return None


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
