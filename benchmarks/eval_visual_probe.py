"""The visual-reliance probe on the tiny VLM, through a real gateway on the real engine.

Held-out image questions (`service.datasets.vision`, two seeds: one to fit, one to evaluate)
are sent to a real gateway (`calib serve`, a subprocess) in front of the real vLLM CPU engine
serving `tiny-vlm`, with `calibration.visual_probe` set per request. Printed:

* mean visual reliance on the real images vs on blank images: the client itself sends a uniform
  image of the same size — the scenes' background colour (an empty scene), and mid-grey (what
  the probe blanks to: a like-for-like check, ~0 expected) — by family × difficulty;
* AUROC for correctness of reliance alone, of the raw confidence alone, and of confidence +
  reliance (a two-feature logistic fitted on the fit seed, scored on the eval seed);
* ECE (10 equal-width bins) on the eval seed of the two-feature calibrator vs the one-feature
  ones (Platt, isotonic on the raw confidence; and the raw confidence), all fitted on the fit
  seed;
* the probe's added latency: p50 of the same eval questions with and without the probe, asked
  one at a time, interleaved (options mode: the probe runs next to the answer; sequence mode:
  it scores the answer after it), and the engine alone serving one request vs a request and its
  perturbed twin at once (how much of the probe's cost is the engine's own compute).

    python -m benchmarks.eval_visual_probe --engine http://127.0.0.1:8012/v1
    python -m benchmarks.eval_visual_probe --engine ... --n 40 --fit-seed 3000 --eval-seed 3001 \\
        --perturbation blank --json /tmp/probe.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.eval_vision import MODEL, _ensure_engine, _start_gateway
from calibrators import FeatureLogistic, IsotonicCalibrator, PlattScaler
from calibrators.logistic import confidence_logit
from calibrators.metrics import auroc, expected_calibration_error
from service.datasets.vision import (
    BACKGROUND,
    DIFFICULTIES,
    FAMILIES,
    SIZE,
    VisionQuestion,
    build_vision_set,
)
from service.proxy._perturb import GREY


@dataclass(frozen=True)
class Probed:
    question: VisionQuestion
    answer: str | None
    confidence: float | None
    reliance: float | None
    status: str
    seconds: float

    @property
    def correct(self) -> bool:
        return self.answer == self.question.answer


def _uniform(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(
    client: httpx.Client,
    q: VisionQuestion,
    probe: bool | str,
    mode: str = "options",
) -> Probed:
    calibration: dict[str, Any] = {"visual_probe": probe}
    if mode == "options":
        calibration |= {"options": q.options, "idk_option": q.idk_option}
    else:
        calibration["mode"] = "sequence"
    body = {
        "model": MODEL,
        "messages": q.messages,
        "max_tokens": 1 if mode == "options" else 6,
        "temperature": 0,
        "calibration": calibration,
    }
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    cal = r.json()["calibration"]
    probe_info = cal.get("visual_probe") or {}
    return Probed(
        q,
        cal.get("answer"),
        cal.get("raw_confidence"),
        cal.get("visual_reliance"),
        str(probe_info.get("status", "off")),
        seconds,
    )


def ask_all(
    gateway: str, questions: list[VisionQuestion], probe: bool | str, workers: int
) -> list[Probed]:
    with httpx.Client(base_url=gateway, timeout=300) as client, ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda q: ask(client, q, probe), questions))


def latency(
    gateway: str, questions: list[VisionQuestion], probe: str, mode: str
) -> dict[str, float]:
    """p50 seconds with and without the probe, one request at a time, interleaved."""
    with_probe: list[float] = []
    without: list[float] = []
    with httpx.Client(base_url=gateway, timeout=300) as client:
        for i, q in enumerate(questions):
            order = (probe, False) if i % 2 else (False, probe)
            for setting in order:
                result = ask(client, q, setting, mode)
                (with_probe if setting else without).append(result.seconds)
    p50_with, p50_without = statistics.median(with_probe), statistics.median(without)
    return {
        "p50_with_s": round(p50_with, 4),
        "p50_without_s": round(p50_without, 4),
        "ratio": round(p50_with / p50_without, 3),
        "n": len(questions),
    }


def engine_pair(engine: str, questions: list[VisionQuestion], kind: str) -> dict[str, float]:
    """The engine alone, no gateway: p50 of one request vs the same request and its perturbed
    twin sent together (what options mode asks of it). A ratio near 2 means the engine is
    compute-bound: two requests cost twice one however they are sent."""
    from service.proxy._perturb import perturb_data_url

    def body(q: VisionQuestion) -> dict[str, Any]:
        return {"model": MODEL, "messages": q.messages, "max_tokens": 1, "temperature": 0,
                "logprobs": True, "top_logprobs": 20}  # fmt: skip

    single: list[float] = []
    pair: list[float] = []
    url = f"{engine}/chat/completions"
    with httpx.Client(timeout=300) as client, ThreadPoolExecutor(2) as ex:
        for q in questions:
            twin = q.with_image(perturb_data_url(q.image_url, kind))
            t0 = time.perf_counter()
            client.post(url, json=body(q)).raise_for_status()
            single.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for r in ex.map(lambda b: client.post(url, json=b), [body(q), body(twin)]):
                r.raise_for_status()
            pair.append(time.perf_counter() - t0)
    p50_single, p50_pair = statistics.median(single), statistics.median(pair)
    return {
        "p50_single_s": round(p50_single, 4),
        "p50_pair_s": round(p50_pair, 4),
        "ratio": round(p50_pair / p50_single, 3),
        "n": len(questions),
    }


def reliance_table(real: list[Probed], blank: list[Probed]) -> str:
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    for kind, answers in (("real", real), ("blank", blank)):
        for a in answers:
            if a.reliance is None:
                continue
            for key in ((a.question.family, a.question.difficulty), (a.question.family, -1),
                        ("all", a.question.difficulty), ("all", -1)):  # fmt: skip
                cells[(f"{kind}:{key[0]}", key[1])].append(a.reliance)
    head = "| family | " + " | ".join(f"d{d}" for d in DIFFICULTIES) + " | all |"
    lines = [head, "|" + " --- |" * (len(DIFFICULTIES) + 2)]
    for family in (*FAMILIES, "all"):
        row = [f"| {family} |"]
        for d in (*DIFFICULTIES, -1):
            real_cell = cells.get((f"real:{family}", d), [])
            blank_cell = cells.get((f"blank:{family}", d), [])
            if not real_cell:
                row.append(" – |")
                continue
            blank_mean = f"{np.mean(blank_cell):.2f}" if blank_cell else "–"
            row.append(f" {np.mean(real_cell):.2f} / {blank_mean} |")
        lines.append("".join(row))
    return "\n".join(lines)


def _arrays(answers: list[Probed]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kept = [a for a in answers if a.confidence is not None and a.reliance is not None]
    conf = np.array([a.confidence for a in kept], dtype=float)
    rel = np.array([a.reliance for a in kept], dtype=float)
    correct = np.array([a.correct for a in kept], dtype=float)
    return conf, rel, correct


def calibration_study(fit: list[Probed], evaluation: list[Probed]) -> dict[str, Any]:
    """AUROC and ECE on `evaluation` of calibrators fitted on `fit`."""
    conf_f, rel_f, y_f = _arrays(fit)
    conf_e, rel_e, y_e = _arrays(evaluation)
    two = FeatureLogistic(("confidence_logit", "visual_reliance")).fit(
        np.column_stack([confidence_logit(conf_f), rel_f]), y_f
    )
    p_two = two.predict_proba(np.column_stack([confidence_logit(conf_e), rel_e]))
    one: dict[str, np.ndarray] = {
        "raw": conf_e,
        "platt": PlattScaler().fit(conf_f, y_f).predict_proba(conf_e),
        "isotonic": IsotonicCalibrator().fit(conf_f, y_f).predict_proba(conf_e),
    }
    ece = {name: expected_calibration_error(p, y_e) for name, p in one.items()}
    ece["logistic:confidence_logit+visual_reliance"] = expected_calibration_error(p_two, y_e)
    best_one = min(("raw", "platt", "isotonic"), key=ece.__getitem__)
    return {
        "n_fit": int(y_f.size),
        "n_eval": int(y_e.size),
        "accuracy_eval": float(y_e.mean()),
        "auroc_reliance": auroc(rel_e, y_e),
        "auroc_confidence": auroc(conf_e, y_e),
        "auroc_confidence_plus_reliance": auroc(p_two, y_e),
        "ece": {k: round(float(v), 4) for k, v in ece.items()},
        "best_one_feature": best_one,
        "two_feature": repr(two),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", help="tiny-vlm's /v1 base URL (default: :8012, started)")
    parser.add_argument("--n", type=int, default=40, help="questions per family and seed")
    parser.add_argument("--fit-seed", type=int, default=3000)
    parser.add_argument("--eval-seed", type=int, default=3001)
    parser.add_argument("--perturbation", default="blank", choices=("blank", "noise", "blur"))
    parser.add_argument("--latency-n", type=int, default=40, help="questions timed per mode")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    engine = _ensure_engine(args.engine)
    fit_qs = build_vision_set(seed=args.fit_seed, n=args.n)
    eval_qs = build_vision_set(seed=args.eval_seed, n=args.n)
    background = _uniform(BACKGROUND)
    blank_qs = [q.with_image(background) for q in eval_qs]
    grey_qs = [q.with_image(_uniform(GREY)) for q in eval_qs]
    kind = args.perturbation
    with tempfile.TemporaryDirectory(prefix="eval-probe-") as tmp:
        proc, gateway = _start_gateway(engine, Path(tmp))
        try:
            t0 = time.monotonic()
            fit = ask_all(gateway, fit_qs, kind, args.workers)
            evaluation = ask_all(gateway, eval_qs, kind, args.workers)
            blank = ask_all(gateway, blank_qs, kind, args.workers)
            grey = ask_all(gateway, grey_qs, kind, args.workers)
            timed = eval_qs[: args.latency_n]
            lat_options = latency(gateway, timed, kind, "options") if timed else None
            lat_sequence = latency(gateway, timed, kind, "sequence") if timed else None
            lat_engine = engine_pair(engine, timed, kind) if timed else None
            seconds = time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    statuses: dict[str, int] = defaultdict(int)
    for a in (*fit, *evaluation, *blank, *grey):
        statuses[a.status] += 1
    real_rel = [a.reliance for a in evaluation if a.reliance is not None]
    blank_rel = [a.reliance for a in blank if a.reliance is not None]
    grey_rel = [a.reliance for a in grey if a.reliance is not None]
    result: dict[str, Any] = {
        "engine": engine,
        "perturbation": kind,
        "seeds": {"fit": args.fit_seed, "eval": args.eval_seed},
        "probe_status": dict(statuses),
        "mean_reliance_real": float(np.mean(real_rel)) if real_rel else None,
        "mean_reliance_blank_background": float(np.mean(blank_rel)) if blank_rel else None,
        "mean_reliance_blank_grey": float(np.mean(grey_rel)) if grey_rel else None,
        **calibration_study(fit, evaluation),
        "latency_options": lat_options,
        "latency_sequence": lat_sequence,
        "latency_engine_pair": lat_engine,
        "seconds": round(seconds, 1),
    }
    print("mean visual reliance, real image / blank (background-colour) image, eval seed:")
    print(reliance_table(evaluation, blank))
    print("mean visual reliance, real image / blank (grey, = the probe's blank) image:")
    print(reliance_table(evaluation, grey))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
