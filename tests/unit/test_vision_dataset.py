"""The synthetic image question set: seeded, schema-complete, and the picture carries the answer."""

from __future__ import annotations

import base64
import io
import json
import random
from collections import Counter

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from clients.cli import app
from service.datasets.vision import (
    COLOURS,
    DIFFICULTIES,
    FAMILIES,
    IDK_LABEL,
    SIZE,
    build_vision_set,
    draw_scene,
    question_text,
    read_vision_jsonl,
    write_vision_jsonl,
)


def _pixels(url: str) -> np.ndarray:
    head, payload = url.split(",", 1)
    assert head == "data:image/png;base64"
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    assert image.format == "PNG"
    assert image.size == (SIZE, SIZE)
    return np.asarray(image.convert("RGB"), dtype=np.int32)


def test_same_seed_same_file_other_seed_other_images(tmp_path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_vision_jsonl(build_vision_set(seed=3, n=12), a)
    write_vision_jsonl(build_vision_set(seed=3, n=12), b)
    write_vision_jsonl(build_vision_set(seed=4, n=12), c)
    assert a.read_bytes() == b.read_bytes()
    urls_a = {q.image_url for q in read_vision_jsonl(a)}
    urls_c = {q.image_url for q in read_vision_jsonl(c)}
    assert not urls_a & urls_c


def test_schema_fields_and_one_text_per_family() -> None:
    questions = build_vision_set(seed=1, n=40)
    assert len(questions) == 40 * len(FAMILIES)
    assert len({q.id for q in questions}) == len(questions)
    texts: dict[str, set[str]] = {}
    for q in questions:
        record = json.loads(json.dumps(q.to_json()))
        assert record["form"] == "vision"
        assert record["options"] == ["A", "B", "C", "D", "E"]
        assert len(record["choices"]) == len(record["options"])
        assert record["choices"][-1] == "I don't know" and record["idk_option"] == IDK_LABEL
        assert record["answer"] in record["options"]
        assert record["difficulty"] in DIFFICULTIES
        (message,) = record["messages"]
        kinds = [part["type"] for part in message["content"]]
        assert sorted(kinds) == ["image_url", "text"]
        text = next(p["text"] for p in message["content"] if p["type"] == "text")
        texts.setdefault(q.family, set()).add(text)
        if q.answerable:
            assert q.answer != IDK_LABEL
            assert q.choices[q.options.index(q.answer)] == q.subject
        else:
            assert q.answer == IDK_LABEL and q.subject == "absent"
    assert {f: len(t) for f, t in texts.items()} == dict.fromkeys(FAMILIES, 1)
    assert texts["colour"] == {question_text("colour")}


def test_difficulties_and_answers_are_spread() -> None:
    questions = build_vision_set(seed=2, n=80)
    for family in FAMILIES:
        of_family = [q for q in questions if q.family == family]
        assert Counter(q.difficulty for q in of_family) == dict.fromkeys(DIFFICULTIES, 20)
        answers = Counter(q.answer for q in of_family)
        assert set("ABCD") <= set(answers), answers  # every real answer occurs
        assert 0 < answers[IDK_LABEL] < 20  # some unanswerable, not many


def test_colour_is_visible_in_clean_pictures() -> None:
    """At difficulty 0 the dominant non-background colour is the answer's colour."""
    rng = random.Random(0)
    names = list(COLOURS)
    for _ in range(20):
        scene = draw_scene("colour", 0, rng)
        pixels = np.asarray(scene.image, dtype=np.int32).reshape(-1, 3)
        distances = [np.abs(pixels - np.array(c)).sum(axis=1) for c in COLOURS.values()]
        counts = [(d < 30).sum() for d in distances]
        assert scene.answer_index is not None
        assert names[int(np.argmax(counts))] == names[scene.answer_index]


def test_position_and_count_follow_the_answer() -> None:
    rng = random.Random(1)
    for _ in range(20):
        scene = draw_scene("position", 0, rng)
        ink = np.abs(np.asarray(scene.image, dtype=np.int32) - 235).sum(axis=2) > 60
        ys, xs = np.nonzero(ink)
        quadrant = int(xs.mean() >= SIZE / 2) + 2 * int(ys.mean() >= SIZE / 2)
        assert quadrant == scene.answer_index
    for _ in range(20):
        scene = draw_scene("count", 0, rng)
        ink = np.abs(np.asarray(scene.image, dtype=np.int32) - 235).sum(axis=2) > 60
        assert scene.answer_index is not None
        assert _blobs(ink) == scene.answer_index + 1


def test_unanswerable_pictures_are_empty_and_difficulty_adds_noise() -> None:
    rng = random.Random(5)
    blank = np.asarray(draw_scene("shape", 0, rng, answerable=False).image, dtype=np.int32)
    assert (blank == 235).all()
    clean = draw_scene("shape", 0, random.Random(9)).image
    noisy = draw_scene("shape", 3, random.Random(9)).image
    assert np.asarray(noisy, dtype=np.int32).std() > np.asarray(clean, dtype=np.int32).std() / 4
    assert len(np.unique(np.asarray(noisy).reshape(-1, 3), axis=0)) > 500


def test_cli_builds_the_vision_form(tmp_path) -> None:
    out = tmp_path / "v.jsonl"
    result = CliRunner().invoke(
        app, ["dataset", "build", "--form", "vision", "--n", "6", "--seed", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    questions = read_vision_jsonl(out)
    assert len(questions) == 6 * len(FAMILIES)
    for q in questions:
        _pixels(q.image_url)


def _blobs(mask: np.ndarray) -> int:
    """Connected components (4-neighbourhood) of a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    count = 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        while stack:
            cy, cx = stack.pop()
            if not (0 <= cy < mask.shape[0] and 0 <= cx < mask.shape[1]):
                continue
            if seen[cy, cx] or not mask[cy, cx]:
                continue
            seen[cy, cx] = True
            stack += [(cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)]
    return count


def test_drawing_module_loads_without_the_project_packages(tmp_path) -> None:
    """The VLM's training scripts load vision.py by path inside the engine virtualenv, where the
    project's packages are not installed: drawing must need only numpy and Pillow."""
    import subprocess
    import sys

    import service.datasets.vision as vision

    script = (
        "import importlib.util, random, sys\n"
        "sys.modules['service'] = None  # as in the engine venv: `import service` fails\n"
        f"spec = importlib.util.spec_from_file_location('calib_vision', {str(vision.__file__)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['calib_vision'] = module\n"
        "spec.loader.exec_module(module)\n"
        "scene = module.draw_scene('count', 2, random.Random(0))\n"
        "print(scene.image.size, scene.answer_index)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"({SIZE}, {SIZE})")
