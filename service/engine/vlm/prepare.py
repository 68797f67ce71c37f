"""Prepare steps of the tiny VLM (on top of the text engine's virtualenv and Gemma folder)."""

from __future__ import annotations

import hashlib
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
#: The train_codes.py runs that made the committed weights, in order (docs/engine.md): the code
#: table through the frozen LM, the tower's pre-training in two runs, then the regression onto the
#: codes in three (the last one adds empty frames). `{outK}` / `{codesK}` name run K's weights /
#: code table.
TRAIN_RECIPE: tuple[tuple[str, ...], ...] = (
    ("--code-steps", "600", "--code-batch", "16", "--code-lr", "0.05", "--steps", "0",
     "--eval-n", "16"),
    ("--code-steps", "0", "--steps", "2000", "--batch", "32", "--mse", "0", "--aux", "1",
     "--eval-n", "0"),
    ("--init", "{out1}", "--code-steps", "0", "--steps", "4000", "--batch", "32", "--mse", "0",
     "--aux", "1", "--eval-n", "0"),
    ("--codes-in", "{codes0}", "--init", "{out2}", "--code-steps", "0", "--steps", "3000",
     "--batch", "32", "--eval-n", "8"),
    ("--codes-in", "{codes0}", "--init", "{out3}", "--code-steps", "0", "--steps", "4000",
     "--batch", "32", "--lr", "5e-4", "--eval-n", "8"),
    ("--codes-in", "{codes0}", "--init", "{out4}", "--code-steps", "0", "--steps", "2000",
     "--batch", "32", "--lr", "3e-4", "--blank-share", "0.1", "--eval-n", "8"),
)  # fmt: skip
_TRAIN_SCRIPT = _HERE / "train_codes.py"


def recipe_commands(python: Path, gemma_dir: Path, work: Path) -> list[tuple[list[str], Path]]:
    """(command, output) of every TRAIN_RECIPE run, placeholders filled with `work`'s files."""
    names: dict[str, str] = {}
    commands = []
    for i, args in enumerate(TRAIN_RECIPE):
        out = work.with_suffix(f".stage{i}.safetensors")
        names[f"out{i}"] = str(out)
        names[f"codes{i}"] = str(out.with_suffix(".codes.safetensors"))
        filled = [a.format(**names) for a in args]
        cmd = [str(python), str(_TRAIN_SCRIPT), str(gemma_dir), str(out), *filled, "--threads", "1"]
        commands.append((cmd, out))
    return commands


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


def weights_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vlm_is_assembled(layout: EngineLayout) -> bool:
    """True when the VLM folder was assembled from the committed weights as they are now.

    The digest, not the file's presence: after an update that ships new weights (same size, same
    name), an existing data dir would otherwise keep serving the old tower without a word.
    """
    if not layout.vlm_marker.exists():
        return False
    if not WEIGHTS_FILE.exists():  # weights trained by prepare: the folder is their assembly
        return True
    try:
        recorded = json.loads(layout.vlm_marker.read_text()).get("weights_sha256")
    except (ValueError, AttributeError):
        return False
    return bool(recorded == weights_digest(WEIGHTS_FILE))


def vlm_is_prepared(layout: EngineLayout) -> bool:
    """True when the VLM folder is assembled from the current weights and torchvision imports in
    the engine virtualenv."""
    return vlm_is_assembled(layout) and torchvision_ready(layout)


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
    """The vision weights: the committed file, or train them now with TRAIN_RECIPE."""
    if WEIGHTS_FILE.exists():
        return WEIGHTS_FILE
    trained = layout.models_dir / "tiny-vlm-vision.safetensors"
    if not trained.exists():
        report("training the VLM's vision tower (no committed weights found; ~75 min on 2 cores)")
        commands = recipe_commands(layout.venv_python, layout.model_dir, trained)
        for cmd, _ in commands:
            run(cmd)
        commands[-1][1].rename(trained)
    return trained


def assemble_vlm(layout: EngineLayout, weights: Path, run: Run, report: Report) -> None:
    report(f"assembling {layout.vlm_dir} (LLaVA: CLIP tower + Gemma 3 270M)")
    run([str(layout.venv_python), str(_HERE / "assemble.py"), str(layout.model_dir),
         str(weights), str(layout.vlm_dir)])  # fmt: skip
    marker = json.loads(layout.vlm_marker.read_text())
    marker["weights_bytes"] = weights.stat().st_size
    marker["weights_sha256"] = weights_digest(weights)
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
        vlm_is_assembled(layout),
        lambda: assemble_vlm(layout, weights[0] if weights else weights_for(layout, run, report),
                             run, report),
    )  # fmt: skip
