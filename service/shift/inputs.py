"""What one request's inputs look like to the shift gauge: a text and an image embedding.

The request path keeps only references (the client's prompt object, the image bytes the body
check already base64-decoded: nothing is decoded twice); the embeddings are computed later, on
the prediction writer's thread (`ShiftMonitor.before_write`), so no request waits for them.

* text: every text the client sent (chat: the text of every message and text part, in order,
  without the gateway's injected system prompt; completions: the prompt string(s); token-id
  prompts have no text) → `calibrators.shift.text_embedding`;
* image: each image part decoded with Pillow (JPEG decoded at reduced scale via `draft`),
  reduced to at most 64 × 64 with a box filter, → `calibrators.shift.image_embedding`; several
  images in one request are averaged into one vector. An image Pillow cannot read (the body
  check only proves it is base64) is skipped, never an error.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calibrators.shift import image_embedding, text_embedding, text_embeddings

__all__ = ["MODALITIES", "RequestInputs", "embed_all", "embed_image_bytes", "prompt_text"]

logger = logging.getLogger(__name__)

MODALITIES = ("image", "text")
#: Feature keys of a prediction (its `features` dict): one list of floats per modality.
FEATURE_KEYS = {"image": "input_embedding_image", "text": "input_embedding_text"}
_IMAGE_SIDE = 64
_DECIMALS = 4  # stored precision: 4 decimals is far below the spread of any feature


def prompt_text(prompt: Any) -> str | None:
    """The client's text: chat messages' text (parts joined by newlines) or completion prompts."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list) or not prompt:
        return None
    if all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    texts: list[str] = []
    for message in prompt:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return "\n".join(texts) if texts else None


def embed_image_bytes(data: bytes) -> np.ndarray | None:
    """Decode one image and embed it; None when Pillow cannot read it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning etc.: we only downsample
            opened = Image.open(io.BytesIO(data))
            if opened.format == "JPEG":
                opened.draft("RGB", (_IMAGE_SIDE, _IMAGE_SIDE))  # DCT-domain downscale: cheap
            image = opened.convert("RGB")
            if image.width > _IMAGE_SIDE or image.height > _IMAGE_SIDE:
                image.thumbnail((_IMAGE_SIDE, _IMAGE_SIDE), Image.Resampling.BOX)
            if image.width < 2 or image.height < 2:
                image = image.resize((max(2, image.width), max(2, image.height)))
            pixels = np.asarray(image)
    except Exception:  # any undecodable payload: no image feature, never an error
        return None
    return image_embedding(pixels)


@dataclass(slots=True)
class RequestInputs:
    """One request's inputs, embedded at most once (several choices share one request)."""

    prompt: Any
    images: list[bytes] = field(default_factory=list)
    profile_task: str = "default"
    _embedded: dict[str, list[float]] | None = None
    counted: bool = False  # already added to the window (once per request, not per choice)
    charged: bool = False  # its bytes count against the monitor's pending bound

    @property
    def nbytes(self) -> int:
        return sum(len(image) for image in self.images)

    def embeddings(self) -> dict[str, list[float]]:
        """{modality: rounded embedding} for the modalities this request has."""
        if self._embedded is None:
            text = prompt_text(self.prompt)
            self._embed(_rounded(text_embedding(text)) if text else None)
        assert self._embedded is not None
        return self._embedded

    def _embed(self, text: list[float] | None) -> None:
        """Finish the embedding with the text's (rounded) vector, None without text."""
        out: dict[str, list[float]] = {}
        if text is not None:
            out["text"] = text
        vectors = [v for v in map(embed_image_bytes, self.images) if v is not None]
        if vectors:
            out["image"] = _rounded(np.mean(vectors, axis=0))
        self._embedded = out
        self.images = []  # the bytes are not needed any more
        self.prompt = None


def embed_all(batch: Iterable[RequestInputs]) -> None:
    """Embed every request of `batch` not embedded yet, the texts in one vectorised pass
    (`text_embeddings`): the same values as `RequestInputs.embeddings` one request at a time,
    at a fraction of the CPU (the writer embeds a whole batch of predictions at once)."""
    todo = list({id(inputs): inputs for inputs in batch if inputs._embedded is None}.values())
    texts = {k: text for k, inputs in enumerate(todo) if (text := prompt_text(inputs.prompt))}
    vectors: list[list[float]] = []
    if texts:
        vectors = np.round(text_embeddings(list(texts.values())), _DECIMALS).tolist()
    text_of = dict(zip(texts, vectors, strict=True))
    for k, inputs in enumerate(todo):
        inputs._embed(text_of.get(k))


def _rounded(vector: np.ndarray) -> list[float]:
    rounded: list[float] = np.round(vector, _DECIMALS).tolist()
    return rounded
