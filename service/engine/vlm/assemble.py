"""Assemble the servable tiny-VLM folder from the Gemma folder and the trained vision weights.

    python assemble.py GEMMA_DIR VISION.safetensors OUT_DIR

Runs in the engine virtualenv. Writes a LlavaForConditionalGeneration checkpoint in the layout
transformers >= 4.52 saves and vLLM's LLaVA loader maps (`model.language_model.*`,
`model.vision_tower.vision_model.*`, `model.multi_modal_projector.*`), plus the processor files
vLLM's multimodal processor reads: the CLIP image processor (64-px resize and crop, CLIP
normalisation), `processor_config.json` (16-px patches, CLS dropped, `<unused1>` as the image
token) and the chat template.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from model import (
    CHAT_TEMPLATE,
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SIZE,
    IMAGE_TOKEN,
    IMAGE_TOKENS,
    PATCH_SIZE,
    llava_config,
)


def assemble(gemma_dir: Path, vision_file: Path, out_dir: Path) -> None:
    from transformers import AutoConfig

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tensors = {}
    with safe_open(str(gemma_dir / "model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            assert key.startswith("model."), key
            tensors["model.language_model." + key.removeprefix("model.")] = f.get_tensor(key)
    with safe_open(str(vision_file), "pt") as f:
        for key in f.keys():  # noqa: SIM118
            name = _vision_name(key)
            if name is not None:
                tensors["model." + name] = f.get_tensor(key)
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})

    config = llava_config(AutoConfig.from_pretrained(gemma_dir))
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = "bfloat16"
    config.save_pretrained(partial)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (gemma_dir / name).exists():
            shutil.copy2(gemma_dir / name, partial / name)
    (partial / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    _write_json(
        partial / "preprocessor_config.json",
        {
            "image_processor_type": "CLIPImageProcessor",
            "processor_class": "LlavaProcessor",
            "do_resize": True,
            "size": {"shortest_edge": IMAGE_SIZE},
            "do_center_crop": True,
            "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            "do_convert_rgb": True,
            "resample": 3,
        },
    )
    _write_json(
        partial / "processor_config.json",
        {
            "processor_class": "LlavaProcessor",
            "patch_size": PATCH_SIZE,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,
            "image_token": IMAGE_TOKEN,
        },
    )
    _write_json(
        partial / ".calib-vlm.json",
        {"image_tokens": IMAGE_TOKENS, "vision_weights": vision_file.name},
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)


def _vision_name(key: str) -> str | None:
    """transformers saves the tower as `vision_tower.*`; vLLM's CLIP wants
    `vision_tower.vision_model.*`. The post-layernorm is unused with the last-layer features
    (and vLLM does not build it), so it is left out."""
    if "post_layernorm" in key:
        return None
    head, _, rest = key.partition(".")
    if head == "vision_tower" and not rest.startswith("vision_model."):
        return f"vision_tower.vision_model.{rest}"
    return key


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    assemble(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
