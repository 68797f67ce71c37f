"""Prepare steps of the tiny VLM (on top of the text engine's virtualenv and Gemma folder)."""

from __future__ import annotations

import json
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path

from service.engine.paths import EngineLayout

Report = Callable[[str], None]
Run = Callable[[list[str]], None]

SERVED_NAME = "tiny-vlm"
VLM_PORT = 8012
#: The CUDA wheel from PyPI, used for its pure-Python transforms only (see torchvision_shim.py).
TORCHVISION_REQUIREMENT = "torchvision==0.28.0"
_HERE = Path(__file__).parent
WEIGHTS_FILE = _HERE / "tiny_vlm_vision.safetensors"
_SHIM = _HERE / "torchvision_shim.py"
_SHIM_MODULE = "calib_torchvision_shim"
_PTH = "calib-torchvision-shim.pth"
#: The train.py runs that made the committed weights, in order (with train.py's defaults); each
#: run after the first continues from the previous one's output (`--init`).
TRAIN_RECIPE: tuple[tuple[str, ...], ...] = (
    (
        "--pre-steps", "700", "--pre-batch", "32", "--pre-lr", "1e-3",
        "--steps", "250", "--batch", "4", "--lr", "1e-3", "--tower-lr-scale", "0.1",
        "--eval-n", "8", "--threads", "1",
    ),
)  # fmt: skip


def site_packages(layout: EngineLayout) -> Path:
    """The engine virtualenv's site-packages (same Python version as ours: made by our venv)."""
    version = sysconfig.get_python_version()
    return layout.venv_dir / "lib" / f"python{version}" / "site-packages"


def torchvision_ready(layout: EngineLayout) -> bool:
    sp = site_packages(layout)
    return (
        (sp / _PTH).exists()
        and (sp / f"{_SHIM_MODULE}.py").exists()
        and any(sp.glob("torchvision-*.dist-info"))
    )


def vlm_is_prepared(layout: EngineLayout) -> bool:
    """True when the VLM folder is assembled and torchvision imports in the engine virtualenv."""
    return layout.vlm_marker.exists() and torchvision_ready(layout)


def install_torchvision(layout: EngineLayout, run: Run, report: Report) -> None:
    sp = site_packages(layout)
    py = str(layout.venv_python)
    report(f"installing {TORCHVISION_REQUIREMENT} (no dependencies) and the import shim")
    shutil.copy2(_SHIM, sp / f"{_SHIM_MODULE}.py")
    (sp / _PTH).write_text(f"import {_SHIM_MODULE}; {_SHIM_MODULE}.install()\n")
    run([py, "-m", "pip", "install", "--no-deps", "--progress-bar", "off",
         TORCHVISION_REQUIREMENT])  # fmt: skip
    report("checking that torchvision and vLLM's LLaVA import")
    run([py, "-c", "import torchvision.transforms.v2, vllm.model_executor.models.llava"])


def weights_for(layout: EngineLayout, run: Run, report: Report) -> Path:
    """The vision weights: the committed file, or train them now (~10 min on 2 cores)."""
    if WEIGHTS_FILE.exists():
        return WEIGHTS_FILE
    trained = layout.models_dir / "tiny-vlm-vision.safetensors"
    if not trained.exists():
        report("training the VLM's vision tower (no committed weights found; ~15 min)")
        previous: Path | None = None
        for i, args in enumerate(TRAIN_RECIPE):
            out = trained.with_suffix(f".stage{i}.safetensors")
            init = ["--init", str(previous)] if previous else []
            run([str(layout.venv_python), str(_HERE / "train.py"), str(layout.model_dir),
                 str(out), *args, *init])  # fmt: skip
            previous = out
        assert previous is not None
        previous.rename(trained)
    return trained


def assemble_vlm(layout: EngineLayout, weights: Path, run: Run, report: Report) -> None:
    report(f"assembling {layout.vlm_dir} (LLaVA: CLIP tower + Gemma 3 270M)")
    run([str(layout.venv_python), str(_HERE / "assemble.py"), str(layout.model_dir),
         str(weights), str(layout.vlm_dir)])  # fmt: skip
    marker = json.loads(layout.vlm_marker.read_text())
    marker["weights_bytes"] = weights.stat().st_size
    layout.vlm_marker.write_text(json.dumps(marker, indent=2) + "\n")


Step = Callable[[str, bool, Callable[[], None]], None]


def prepare_vlm(layout: EngineLayout, run: Run, report: Report, step: Step) -> None:
    """Run the VLM's steps through `step(name, done, action)` (the text prepare's bookkeeping)."""
    step("torchvision", torchvision_ready(layout), lambda: install_torchvision(layout, run, report))
    weights: list[Path] = []
    step(
        "vlm-weights",
        WEIGHTS_FILE.exists(),
        lambda: weights.append(weights_for(layout, run, report)),
    )
    step(
        "vlm-assemble",
        layout.vlm_marker.exists(),
        lambda: assemble_vlm(layout, weights[0] if weights else weights_for(layout, run, report),
                             run, report),
    )  # fmt: skip
