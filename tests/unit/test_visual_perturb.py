"""Image perturbations of the visual probe, and its request/model opt-in resolution."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from calibrators import Profile
from service.errors import APIError
from service.proxy._perturb import GREY, perturb_data_url
from service.proxy._plan import parse_calibration, resolve_plan
from service.settings import ModelConfig


def _url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _open(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _scene() -> Image.Image:
    image = Image.new("RGB", (48, 32), (240, 240, 240))
    image.paste((200, 20, 20), (8, 8, 24, 24))
    return image


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_blank_is_uniform_grey_of_the_same_size(fmt):
    out = _open(perturb_data_url(_url(_scene(), fmt), "blank"))
    assert out.size == (48, 32) and out.mode == "RGB"
    assert out.getextrema() == tuple((g, g) for g in GREY)


def test_noise_is_seeded_by_the_image_and_destroys_it():
    url = _url(_scene())
    first, again = perturb_data_url(url, "noise"), perturb_data_url(url, "noise")
    assert first == again  # reproducible
    pixels = np.asarray(_open(first), dtype=float)
    assert pixels.shape == (32, 48, 3) and pixels.std() > 50
    other = _scene()
    other.putpixel((0, 0), (0, 0, 0))
    assert perturb_data_url(_url(other), "noise") != first


def test_blur_keeps_the_colour_and_removes_the_edges():
    scene = np.asarray(_scene(), dtype=float)
    out = np.asarray(_open(perturb_data_url(_url(_scene()), "blur")), dtype=float)
    assert out.shape == scene.shape
    assert np.abs(out.mean(axis=(0, 1)) - scene.mean(axis=(0, 1))).max() < 12
    edges = lambda a: np.abs(np.diff(a, axis=1)).max()  # noqa: E731
    assert edges(out) < edges(scene) / 4


def test_unreadable_images_raise_for_the_probe_to_report():
    with pytest.raises(OSError):
        perturb_data_url("data:image/png;base64,QUJDRA==", "blank")
    with pytest.raises(APIError):
        perturb_data_url("data:text/plain;base64,QUJDRA==", "blank")


def _plan(raw, **probe):
    config = ModelConfig(options=["A", "B"], visual_probe=probe)
    return resolve_plan(parse_calibration(raw), Profile.identity("m", "default"), config)


def test_request_overrides_the_model_configuration():
    assert _plan(None).visual_probe is None
    assert _plan(None, enabled=True).visual_probe == "blank"
    assert _plan(None, enabled=True, perturbation="noise").visual_probe == "noise"
    assert _plan({"visual_probe": False}, enabled=True).visual_probe is None
    assert _plan({"visual_probe": True}).visual_probe == "blank"
    assert _plan({"visual_probe": "blur"}, enabled=True).visual_probe == "blur"
    assert _plan(None, enabled=True, sample_rate=0.0).visual_probe is None


def test_sample_rate_samples():
    probed = sum(_plan(None, enabled=True, sample_rate=0.3).visual_probe is not None
                 for _ in range(2000))  # fmt: skip
    assert 450 < probed < 750


@pytest.mark.parametrize("value", ["grey", 0, [], "BLANK"])
def test_invalid_values_are_400(value):
    with pytest.raises(APIError) as info:
        parse_calibration({"visual_probe": value})
    assert info.value.status == 400 and info.value.param == "calibration.visual_probe"


def test_model_config_validates():
    with pytest.raises(ValueError):
        ModelConfig(visual_probe={"perturbation": "grey"})
    with pytest.raises(ValueError):
        ModelConfig(visual_probe={"sample_rate": 1.5})
