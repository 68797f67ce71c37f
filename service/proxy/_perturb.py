"""Image perturbations of the visual-reliance probe, in-process with Pillow on data URLs.

Each takes the information out of the picture while keeping what the engine's image processor
sees structurally the same (size, mode, a valid PNG), so the perturbed request differs from the
client's only in what the image shows:

* ``blank``: a uniform mid-grey (128, 128, 128) of the same size — no content at all;
* ``noise``: uniform random pixels of the same size, seeded by the image's bytes (the same image
  always gets the same noise, so probes are reproducible);
* ``blur``: a Gaussian blur of radius size/8 — shapes, edges and text are gone, the overall
  colour stays (a question about colour may still be answerable: lower reliance is honest there).

Remote (`http(s)`) images are never fetched: the caller skips the probe for them.
"""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
from PIL import Image, ImageFilter

from service.proxy._body import data_url_bytes
from service.settings import Perturbation

__all__ = ["GREY", "perturb_data_url", "perturb_image"]

GREY = (128, 128, 128)


def perturb_image(image: Image.Image, kind: Perturbation, seed: int = 0) -> Image.Image:
    """The perturbed RGB image, the same size as ``image``."""
    rgb = image.convert("RGB")
    if kind == "blank":
        return Image.new("RGB", rgb.size, GREY)
    if kind == "noise":
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, size=(rgb.height, rgb.width, 3), dtype=np.uint8)
        return Image.fromarray(pixels, "RGB")
    if kind == "blur":
        radius = max(rgb.size) / 8
        return rgb.filter(ImageFilter.GaussianBlur(radius))
    raise ValueError(f"unknown perturbation {kind!r}")


def perturb_data_url(url: str, kind: Perturbation) -> str:
    """A ``data:image/png;base64,...`` URL of the perturbed image.

    Raises ``APIError`` (from the data URL decoding) or ``OSError``/``ValueError`` (Pillow cannot
    read the bytes); the probe turns either into a failed probe, never a failed answer.
    """
    raw = data_url_bytes(url)
    seed = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")
    with Image.open(io.BytesIO(raw)) as image:
        image.load()
        out = perturb_image(image, kind, seed)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
