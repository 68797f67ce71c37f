"""Synthetic visual questions: seeded 64×64 images of coloured shapes, four question families.

Every family asks one fixed text (so only the image tells the answer) with lettered options
A–D plus ``E. I don't know``:

- ``colour``: the colour of the shape (red, green, blue, yellow);
- ``shape``: its kind (circle, square, triangle, cross);
- ``count``: how many shapes (1–4);
- ``position``: the quadrant it sits in (top left, top right, bottom left, bottom right).

``difficulty`` 0 is a clean picture of large shapes; each level adds pixel noise, blur, smaller
shapes, lower contrast and (from 2) an occluding grey bar. Unanswerable questions (``answerable``
false, answer ``E``) show no shape at all: asking for the colour of a shape that is absent.

This module imports only the standard library, numpy and Pillow: the VLM's training script runs
it inside the engine virtualenv (loaded by file path) to draw the same images the demo sends.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64
FAMILIES: tuple[str, ...] = ("colour", "shape", "count", "position")
DIFFICULTIES: tuple[int, ...] = (0, 1, 2, 3)
LABELS: tuple[str, ...] = ("A", "B", "C", "D", "E")
IDK_TEXT = "I don't know"
IDK_LABEL = "E"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 205, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COUNTS: tuple[str, ...] = ("1", "2", "3", "4")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
BACKGROUND = (235, 235, 235)

#: The answer strings of each family, in option order (A–D); E is always "I don't know".
FAMILY_CHOICES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": COUNTS,
    "position": POSITIONS,
}
_FAMILY_QUESTION: dict[str, str] = {
    "colour": "What colour is the shape in the image?",
    "shape": "What kind of shape is in the image?",
    "count": "How many shapes are in the image?",
    "position": "Where is the shape in the image?",
}


@dataclass(frozen=True)
class Level:
    """How hard a difficulty level makes the picture."""

    size: tuple[int, int]  # shape size range in pixels (count family: 0.75×)
    noise: float  # std of Gaussian pixel noise
    blur: float  # Gaussian blur radius
    contrast: float  # 1 = full colour, lower = blended towards the background
    occlude: bool  # a grey bar across the picture


LEVELS: dict[int, Level] = {
    0: Level((22, 28), 0.0, 0.0, 1.0, False),
    1: Level((15, 20), 25.0, 0.6, 0.8, False),
    2: Level((10, 14), 50.0, 1.2, 0.55, True),
    3: Level((6, 9), 75.0, 1.6, 0.35, True),
}


def question_text(family: str) -> str:
    """The one text every question of `family` asks (question, lettered choices, instruction)."""
    choices = [*FAMILY_CHOICES[family], IDK_TEXT]
    lines = "\n".join(f"{label}. {choice}" for label, choice in zip(LABELS, choices, strict=True))
    return f"{_FAMILY_QUESTION[family]}\n{lines}\nAnswer with the letter only."


@dataclass(frozen=True)
class VisionQuestion:
    """One image question in the JSONL schema of docs/datasets.md (form ``vision``)."""

    id: str
    form: str
    family: str
    difficulty: int
    answerable: bool
    answer: str
    messages: list[dict[str, Any]]
    options: list[str]
    choices: list[str]
    idk_option: str
    subject: str  # the true value asked about ("red", "3", ...) or "absent"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> VisionQuestion:
        return cls(**record)

    @property
    def image_url(self) -> str:
        """The PNG data URL of the question's image."""
        for part in self.messages[0]["content"]:
            if part.get("type") == "image_url":
                return str(part["image_url"]["url"])
        raise ValueError(f"question {self.id} has no image part")

    def with_image(self, url: str) -> VisionQuestion:
        """The same question showing another image (for image-swap tests)."""
        content = [
            {"type": "image_url", "image_url": {"url": url}} if p.get("type") == "image_url" else p
            for p in self.messages[0]["content"]
        ]
        messages = [{"role": "user", "content": content}]
        return VisionQuestion(**{**asdict(self), "messages": messages})


@dataclass(frozen=True)
class Scene:
    """What a picture shows: the shapes and the answer of its family's question."""

    image: Image.Image
    answer_index: int | None  # index into FAMILY_CHOICES[family]; None = absent (IDK)
    attributes: dict[str, int | None] | None = None
    """Every family's answer index this picture defines (4 = absent, None = not defined: e.g.
    the colour of a picture of several shapes). Used to train one picture on all questions."""


def draw_scene(family: str, difficulty: int, rng: random.Random, answerable: bool = True) -> Scene:
    """Draw one picture for `family` at `difficulty` from `rng` (same rng state, same picture)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    level = LEVELS[difficulty]
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    answer: int | None = None
    attributes: dict[str, int | None] = dict.fromkeys(FAMILIES, 4)
    if answerable:
        answer = rng.randrange(4)
        count = answer + 1 if family == "count" else 1
        lo, hi = level.size
        if family == "count":
            lo, hi = max(5, int(lo * 0.75)), max(6, int(hi * 0.75))
        boxes: list[tuple[int, int, int]] = []
        for _ in range(count):
            size = rng.randint(lo, hi)
            quadrant = answer if family == "position" else None
            boxes.append(_place(rng, size, boxes, quadrant))
        colour = rng.choice(list(COLOURS))
        kind = rng.choice(SHAPES)
        if family == "colour":
            colour = list(COLOURS)[answer]
        if family == "shape":
            kind = SHAPES[answer]
        for x, y, size in boxes:
            if family == "count":
                colour, kind = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            fill = _blend(COLOURS[colour], level.contrast)
            _shape(draw, kind, x, y, size, fill)
        attributes = _attributes(family, answer, boxes, list(COLOURS).index(colour), kind)
    if level.occlude:
        _occlude(draw, rng)
    if level.blur:
        image = image.filter(ImageFilter.GaussianBlur(level.blur))
    if level.noise:
        seed = rng.randrange(2**32)
        noise = np.random.default_rng(seed).normal(0.0, level.noise, (SIZE, SIZE, 3))
        pixels = np.asarray(image, dtype=np.float64) + noise
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return Scene(image, answer, attributes)


def _attributes(
    family: str, answer: int, boxes: list[tuple[int, int, int]], colour: int, kind: str
) -> dict[str, int | None]:
    if family == "count":
        return {"colour": None, "shape": None, "count": answer, "position": None}
    x, y, size = boxes[0]
    cx, cy = x + size / 2, y + size / 2
    half = SIZE / 2
    near_middle = abs(cx - half) < 4 or abs(cy - half) < 4
    quadrant = int(cx >= half) + 2 * int(cy >= half)
    return {
        "colour": colour,
        "shape": SHAPES.index(kind),
        "count": 0,
        "position": answer if family == "position" else (None if near_middle else quadrant),
    }


def png_data_url(image: Image.Image) -> str:
    """A `data:image/png;base64,...` URL (deterministic bytes for the same pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def build_vision_set(
    seed: int = 0,
    n: int = 100,
    families: Iterable[str] = FAMILIES,
    difficulties: Sequence[int] = DIFFICULTIES,
    unanswerable_fraction: float = 0.1,
) -> list[VisionQuestion]:
    """`n` questions per family, difficulties cycled evenly; the same for the same arguments."""
    out: list[VisionQuestion] = []
    for family in families:
        rng = random.Random(f"vision:{seed}:{family}")
        for i in range(n):
            difficulty = difficulties[i % len(difficulties)]
            answerable = rng.random() >= unanswerable_fraction
            scene = draw_scene(family, difficulty, rng, answerable)
            out.append(_question(f"vision-{family}-{seed}-{i}", family, difficulty, scene))
    return out


def write_vision_jsonl(questions: Iterable[VisionQuestion], path: Path) -> int:
    """The same JSONL writer as the text forms (one object per line)."""
    from service.datasets.questions import write_jsonl  # not at import: train.py loads this file

    return write_jsonl(questions, path)


def read_vision_jsonl(path: Path) -> list[VisionQuestion]:
    from service.datasets.questions import read_json_lines

    return [VisionQuestion.from_json(obj) for obj in read_json_lines(path)]


# -- drawing ------------------------------------------------------------------------------------


def _question(qid: str, family: str, difficulty: int, scene: Scene) -> VisionQuestion:
    answerable = scene.answer_index is not None
    answer = LABELS[scene.answer_index] if scene.answer_index is not None else IDK_LABEL
    content = [
        {"type": "image_url", "image_url": {"url": png_data_url(scene.image)}},
        {"type": "text", "text": question_text(family)},
    ]
    return VisionQuestion(
        id=qid,
        form="vision",
        family=family,
        difficulty=difficulty,
        answerable=answerable,
        answer=answer,
        messages=[{"role": "user", "content": content}],
        options=list(LABELS),
        choices=[*FAMILY_CHOICES[family], IDK_TEXT],
        idk_option=IDK_LABEL,
        subject=FAMILY_CHOICES[family][scene.answer_index]
        if scene.answer_index is not None
        else "absent",
    )


def _place(
    rng: random.Random, size: int, taken: list[tuple[int, int, int]], quadrant: int | None
) -> tuple[int, int, int]:
    """Top-left corner for a `size` box not overlapping `taken` (inside `quadrant` if given)."""
    half = SIZE // 2
    for _ in range(200):
        if quadrant is None:
            x, y = rng.randint(1, SIZE - size - 1), rng.randint(1, SIZE - size - 1)
        else:
            x0, y0 = (quadrant % 2) * half, (quadrant // 2) * half
            x = rng.randint(x0 + 1, max(x0 + 1, x0 + half - size - 1))
            y = rng.randint(y0 + 1, max(y0 + 1, y0 + half - size - 1))
        if all(x + size + 2 <= a or a + s + 2 <= x or y + size + 2 <= b or b + s + 2 <= y
               for a, b, s in taken):  # fmt: skip
            return x, y, size
    return x, y, size  # crowded: accept an overlap rather than loop forever


def _blend(colour: tuple[int, int, int], contrast: float) -> tuple[int, int, int]:
    pairs = zip(colour, BACKGROUND, strict=True)
    mixed = (round(c * contrast + b * (1 - contrast)) for c, b in pairs)
    return tuple(mixed)  # type: ignore[return-value]


def _shape(
    draw: ImageDraw.ImageDraw, kind: str, x: int, y: int, size: int, fill: tuple[int, int, int]
) -> None:
    box = (x, y, x + size - 1, y + size - 1)
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        end = size - 1
        draw.polygon([(x + size / 2, y), (x, y + end), (x + end, y + end)], fill=fill)
    else:  # cross
        t = max(2, size // 3)
        mid = (size - t) // 2
        draw.rectangle((x + mid, y, x + mid + t - 1, y + size - 1), fill=fill)
        draw.rectangle((x, y + mid, x + size - 1, y + mid + t - 1), fill=fill)


def _occlude(draw: ImageDraw.ImageDraw, rng: random.Random) -> None:
    """A grey bar across the picture: hides part of a shape (or all of a small one)."""
    width = rng.randint(6, 10)
    start = rng.randint(8, SIZE - 8 - width)
    if rng.random() < 0.5:
        draw.rectangle((start, 0, start + width, SIZE - 1), fill=(128, 128, 128))
    else:
        draw.rectangle((0, start, SIZE - 1, start + width), fill=(128, 128, 128))
