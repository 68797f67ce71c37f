"""The tiny VLM's shape: a LLaVA with a small CLIP vision tower in front of the real Gemma 3 270M.

Runs inside the engine virtualenv (torch, transformers). Shared by the training script and the
assembly step so both build exactly the same modules:

    64×64 RGB -> CLIP ViT (16-px patches, 4 layers, width 192) -> 16 patch features (CLS dropped)
              -> projector (Linear 192->640, GELU, Linear 640->640) -> 16 image-token embeddings
    prompt    = <bos> question text \\n <16 image tokens> \\n Answer:   -> frozen Gemma 3 270M

The image placeholder is `<unused1>` (a token Gemma never produced in training); the chat
template renders every image part after the text parts, so the text prefix does not depend on the
image (training caches it once per question family).
"""

from __future__ import annotations

IMAGE_SIZE = 64
PATCH_SIZE = 16
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
IMAGE_TOKEN = "<unused1>"
IMAGE_TOKEN_ID = 7
ANSWER_PREFIX = "\nAnswer:"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The image tokens are 4 slots of 4 tokens, one per question family (in this order): training
#: teaches the tower to write each family's answer into its slot (train.py).
SLOTS: tuple[str, ...] = ("colour", "shape", "count", "position")
SLOT_TOKENS = IMAGE_TOKENS // len(SLOTS)

VISION = {
    "hidden_size": 192,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 3,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "projection_dim": 192,
    "hidden_act": "quick_gelu",
}

#: Renders chat messages for the base LM: text parts first, then one placeholder per image, then
#: the answer cue. vLLM expands each placeholder to IMAGE_TOKENS image tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] in ('image', 'image_url') -%}"
    "{{ '\\n' }}" + IMAGE_TOKEN + "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\nAnswer:' }}{%- endif -%}"
)


def build_modules(text_config: object):  # type: ignore[no-untyped-def]
    """(vision tower, projector) with the LLaVA layout transformers and vLLM expect."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = llava_config(text_config)
    tower = CLIPVisionModel(CLIPVisionConfig(**VISION))
    projector = LlavaMultiModalProjector(config)
    return tower, projector


def llava_config(text_config: object):  # type: ignore[no-untyped-def]
    from transformers import CLIPVisionConfig, LlavaConfig

    return LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION).to_dict() | {"model_type": "clip_vision_model"},
        text_config=text_config.to_dict(),  # type: ignore[attr-defined]
        image_token_index=IMAGE_TOKEN_ID,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=IMAGE_TOKENS,
        tie_word_embeddings=True,
    )


def image_features(tower, projector, pixel_values):  # type: ignore[no-untyped-def]
    """Image-token embeddings exactly as LLaVA computes them (last layer, CLS dropped)."""
    out = tower(pixel_values=pixel_values, output_hidden_states=True)
    return projector(out.hidden_states[-1][:, 1:])
