"""Cost of the input-shift gauge's features per request (target: ≤ 1 ms per image on this CPU).

Measured in one process, each figure the median of `--repeat` timed loops:

* per image (data URLs of several sizes and formats): the gateway's own body check of the image
  part (`validate_image_parts`: the base64 decode every image request already pays — the
  baseline), and the shift feature (`embed_image_bytes`: Pillow decode, box downscale to
  ≤ 64 px, `calibrators.shift.image_embedding`) on the bytes that check decoded;
* per text: the prompt hash every request already pays (`_prompt_hash`, the baseline) and
  `text_embedding` of the same prompt;
* the permutation test of one modality (reference 1000, window 500, 499 permutations), which
  runs at read time (route, scrape), not per request.

The feature runs on the prediction writer's thread after the response is sent; these numbers
are CPU per request, not added latency.

    python -m benchmarks.bench_shift_features [--repeat 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from calibrators.shift import (
    IMAGE_EMBEDDING_DIM,
    fit_shift_reference,
    shift_test,
    text_embedding,
)
from service.datasets.vision import draw_scene, question_text
from service.proxy._body import validate_image_parts
from service.proxy._handler import _prompt_hash
from service.shift.inputs import embed_image_bytes


def per_call(fn: Callable[[], Any], repeat: int, min_time: float = 0.2) -> float:
    """Median CPU seconds (this process's) per call over `repeat` loops of at least `min_time`
    each. CPU time, not wall time: on a shared machine the wall clock also counts the time
    other processes held the core."""
    loops = 1
    while True:
        t = time.process_time()
        for _ in range(loops):
            fn()
        if time.process_time() - t >= min_time / 4 or loops > 1_000_000:
            break
        loops *= 4
    samples = []
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(loops):
            fn()
        samples.append((time.process_time() - t) / loops)
    return statistics.median(samples)


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _data_url(image: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def images() -> dict[str, str]:
    scene = draw_scene("colour", 3, random.Random(5)).image  # 64×64, noisy: the dataset's own
    photo_like = Image.effect_noise((512, 512), 40).convert("RGB")
    return {
        "dataset 64x64 PNG": _data_url(scene, "PNG"),
        "224x224 PNG": _data_url(scene.resize((224, 224)), "PNG"),
        "224x224 JPEG": _data_url(scene.resize((224, 224)), "JPEG"),
        "512x512 JPEG (noise)": _data_url(photo_like, "JPEG"),
        "512x512 PNG (noise)": _data_url(photo_like, "PNG"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    print("CPU µs per call (the permutation test: ms), median of loops; load average", _load())
    print("| input | baseline (gateway already) | µs | shift feature | µs | ratio |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    for name, url in images().items():
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        decoded: list[bytes] = []
        validate_image_parts(messages, decoded)
        assert embed_image_bytes(decoded[0]) is not None
        base = per_call(lambda m=messages: validate_image_parts(m), args.repeat)
        feat = per_call(lambda d=decoded[0]: embed_image_bytes(d), args.repeat)
        rows.append({"input": name, "baseline_s": base, "feature_s": feat})
        print(
            f"| {name} ({len(url) // 1024} KiB URL) | body check | {base * 1e6:.0f} | "
            f"image embedding | {feat * 1e6:.0f} | {feat / base:.1f} |"
        )
    texts = {
        "dataset question": question_text("colour"),
        "2 KiB prompt": ("Which of the following is right? " * 64)[:2048],
    }
    for name, text in texts.items():
        messages = [{"role": "user", "content": text}]
        base = per_call(lambda m=messages: _prompt_hash("m", m), args.repeat)
        feat = per_call(lambda t=text: text_embedding(t), args.repeat)
        rows.append({"input": name, "baseline_s": base, "feature_s": feat})
        print(
            f"| {name} ({len(text)} chars) | prompt hash | {base * 1e6:.0f} | "
            f"text embedding | {feat * 1e6:.0f} | {feat / base:.1f} |"
        )
    rng = np.random.default_rng(0)
    reference = fit_shift_reference(rng.normal(size=(1000, IMAGE_EMBEDDING_DIM)))
    window = rng.normal(size=(500, IMAGE_EMBEDDING_DIM))
    test_s = per_call(lambda: shift_test(reference, window), max(3, args.repeat // 2), 0.5)
    print(
        f"\npermutation test (reference 1000, window 500, 499 permutations): {test_s * 1e3:.0f} ms"
    )
    result = {"rows": rows, "test_s": test_s}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
