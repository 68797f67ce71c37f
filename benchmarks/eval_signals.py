"""Sequence signals on the real engine: which one ranks and calibrates free-form answers best.

The country cloze task (`service.datasets`, the demo's `cloze` task: few-shot "Q: What is the
capital of X?\\nA:", greedy, stop at the newline, at most 8 tokens) through a real gateway (in
this process, on loopback, in front of the engine, SQLite in a temporary folder, the shipped
`refit_feature_sets`). The questions are split by a seeded shuffle into a training part and a
held-out part:

1. the training part is answered through the gateway (sequence mode, `task: cloze-signals`) and
   its correctness posted as feedback; one refit chooses among Platt on exp(mean logprob) and
   the logistic candidates by held-out NLL (the refit's own hold-out inside the training part);
2. the held-out part is answered with the new profile: its served confidence is the chosen
   calibrator's;
3. today's calibration (a refit with no feature sets: Platt on exp(mean logprob)) is the same
   pure `refit_profile` on the same training labels, without feature sets, applied to the
   held-out answers.

The client asks for `logprobs: 2`, so the engine lists the top-2 and `first_margin` is
measured (the gateway itself asks for no top-K in sequence mode: by default the margin is
missing and the refit skips the candidates that need it).

Printed (and written with `--json`): the refit's reason and its candidates' held-out NLL; ECE
(10 bins), Brier, NLL and AUROC on the held-out questions of raw exp(mean logprob), today's
Platt and the served (chosen) calibrator; a per-signal table: each raw signal's AUROC (right vs
wrong, all questions), and the held-out ECE / Brier / NLL of the logistic map over that signal
alone fitted on the training part, averaged over `--repeats` random train/held-out splits.

    python -m benchmarks.eval_signals --engine http://127.0.0.1:8011/v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks._gateway import InThreadGateway
from calibrators import (
    CONFIDENCE_LOGIT,
    SEQUENCE_FEATURE_SETS,
    SEQUENCE_SIGNALS,
    FeatureLogistic,
    Profile,
    SequenceScore,
    apply_profile,
    auroc,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    score_sequence,
)
from calibrators.refit import LabeledSet, RefitPolicy, refit_profile
from service.datasets import build_question_set
from service.datasets.countries import normalize

TASK = "cloze-signals"


@dataclass
class Item:
    id: str
    prompt: str
    gold: str
    aliases: tuple[str, ...]

    def is_correct(self, text: str) -> bool:
        """The demo's grading: the normalized first line is the capital (or starts with it)."""
        lines = text.strip().splitlines()
        first = normalize(lines[0] if lines else "")
        return any(
            first == normalize(t) or first.startswith(normalize(t) + " ")
            for t in (self.gold, *self.aliases)
        )


@dataclass
class Answer:
    item: Item
    text: str
    correct: bool
    calibration: dict[str, Any]
    score: SequenceScore  # from the returned logprobs, by the gateway's own pure function

    @property
    def signals(self) -> dict[str, float]:
        return self.score.signals()

    @property
    def raw(self) -> float | None:
        return self.score.raw_confidence


def build_items(seed: int, n: int) -> list[Item]:
    questions = build_question_set(seed=seed, n=n, forms=("cloze",))
    items = [Item(q.id, q.cloze_prompt, q.answer, tuple(q.aliases)) for q in questions]
    random.Random(seed).shuffle(items)
    return items


async def _ask(
    client: httpx.AsyncClient, model: str, item: Item, gate: asyncio.Semaphore
) -> Answer:
    body = {
        "model": model,
        "prompt": item.prompt,
        "max_tokens": 8,
        "temperature": 0,
        "stop": ["\n"],
        "logprobs": 2,
        "calibration": {"task": TASK, "mode": "sequence", "abstain": "off"},
    }
    async with gate:
        response = await client.post("/completions", json=body)
    response.raise_for_status()
    data = response.json()
    choice = data["choices"][0]
    score = score_sequence(choice.get("logprobs"))
    return Answer(
        item,
        choice["text"],
        item.is_correct(choice["text"]),
        data["calibration"],
        score,
    )


async def ask_all(url: str, model: str, items: list[Item], concurrency: int) -> list[Answer]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return list(await asyncio.gather(*(_ask(client, model, i, gate) for i in items)))


def labeled_set(answers: list[Answer]) -> LabeledSet:
    scored = [a for a in answers if a.raw is not None]
    return LabeledSet(
        ids=[a.calibration["id"] for a in scored],
        mode="sequence",
        correct=np.array([a.correct for a in scored], dtype=float),
        raw_confidence=np.array([a.raw for a in scored], dtype=float),
        signals={
            name: np.array([a.signals.get(name, np.nan) for a in scored], dtype=float)
            for name in SEQUENCE_SIGNALS
        },
    )


def quality(conf: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    return {
        "ece": float(expected_calibration_error(conf, correct, n_bins=10)),
        "brier": float(brier_score(conf, correct)),
        "nll": float(negative_log_likelihood(conf, correct)),
        "auroc": float(auroc(conf, correct)),
        "mean_confidence": float(conf.mean()),
    }


def _column(data: LabeledSet, name: str) -> np.ndarray:
    if name == CONFIDENCE_LOGIT:
        p = np.clip(data.raw_confidence, 1e-6, 1 - 1e-6)  # type: ignore[arg-type]
        return np.asarray(np.log(p) - np.log1p(-p))
    return data.signals[name]


def signal_table(data: LabeledSet, repeats: int, seed: int) -> list[dict[str, Any]]:
    """Per feature set: raw AUROC (one signal), and held-out quality of its logistic map over
    `repeats` random half splits (mean, and sd of ECE)."""
    rng = np.random.default_rng(seed)
    sets = [(CONFIDENCE_LOGIT,), *SEQUENCE_FEATURE_SETS, ("n_tokens",)]
    rows = []
    for names in sets:
        x = np.column_stack([_column(data, name) for name in names])
        measured = np.isfinite(x).all(axis=1)
        row: dict[str, Any] = {"features": "+".join(names), "n": int(measured.sum())}
        if measured.sum() < 20:
            rows.append(row)
            continue
        x, y = x[measured], data.correct[measured]
        if len(names) == 1:
            row["auroc_raw"] = float(auroc(x[:, 0], y))
        scores: list[dict[str, float]] = []
        for _ in range(repeats):
            held = rng.uniform(size=len(y)) < 0.5
            if held.all() or not held.any():
                continue
            model = FeatureLogistic(names).fit(x[~held], y[~held])
            scores.append(quality(model.predict_proba(x[held]), y[held]))
        for key in ("ece", "brier", "nll", "auroc"):
            row[key] = float(np.mean([s[key] for s in scores]))
        row["ece_sd"] = float(np.std([s["ece"] for s in scores]))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="http://127.0.0.1:8011/v1")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--n", type=int, default=242, help="cloze questions (242 countries)")
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    items = build_items(args.seed, args.n)
    cut = int(len(items) * args.train_fraction)
    train_items, held_items = items[:cut], items[cut:]
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        InThreadGateway.for_engine(
            args.engine, Path(tmp), api_root=True, refit_min_labels=30, refit_executor="thread"
        ) as url,
    ):
        train = asyncio.run(ask_all(url, args.model, train_items, args.concurrency))
        feedback = [{"id": a.calibration["id"], "correct": a.correct} for a in train]
        with httpx.Client(base_url=url, timeout=600) as client:
            client.post("/feedback", json=feedback).raise_for_status()
            outcome = client.post(
                f"/calibration/models/{args.model}/refit", params={"task": TASK}
            ).json()
        held = asyncio.run(ask_all(url, args.model, held_items, args.concurrency))
    elapsed = time.perf_counter() - started

    served = [a for a in held if a.calibration.get("confidence") is not None]
    correct = np.array([a.correct for a in served], dtype=float)
    raw = np.array([a.calibration["raw_confidence"] for a in served], dtype=float)
    chosen = np.array([a.calibration["confidence"] for a in served], dtype=float)
    # Today's refit (no feature sets) on the same training labels, applied to the same answers.
    train_set = labeled_set(train)
    today = refit_profile(train_set, Profile.identity(args.model, TASK), RefitPolicy(min_labels=30))
    assert today.candidate is not None, today.reason
    platt = np.array(
        [apply_profile(today.candidate, a.score).confidence for a in served],
        dtype=float,
    )
    result = {
        "questions": {"train": len(train), "held_out": len(held), "held_out_scored": len(served)},
        "accuracy": {
            "train": float(np.mean([a.correct for a in train])),
            "held_out": float(correct.mean()) if len(correct) else None,
        },
        "refit": {
            "status": outcome.get("status"),
            "method": outcome.get("method"),
            "chosen": (outcome.get("metrics") or {}).get("chosen"),
            "reason": outcome.get("reason"),
            "heldout_nll": (outcome.get("metrics") or {}).get("heldout_nll"),
        },
        "today": {"chosen": today.metrics.get("chosen"), "reason": today.reason},
        "held_out": {
            "raw": quality(raw, correct),
            "platt_today": quality(platt, correct),
            "chosen_served": quality(chosen, correct),
        },
        "signals": signal_table(labeled_set(train + held), args.repeats, args.seed),
        "seconds": round(elapsed, 1),
    }
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _print(result: dict[str, Any]) -> None:
    q, acc, refit = result["questions"], result["accuracy"], result["refit"]
    print(f"cloze: {q['train']} training, {q['held_out']} held-out questions")
    print(f"accuracy: train {acc['train']:.3f}, held-out {acc['held_out']:.3f}")
    print(f"refit: {refit['status']} {refit['chosen']} — {refit['reason']}")
    for name, nll in sorted((refit["heldout_nll"] or {}).items(), key=lambda kv: str(kv[0])):
        print(f"  held-out NLL {name}: {nll if nll is None else round(nll, 4)}")
    print("\nheld-out questions | ECE | Brier | NLL | AUROC | mean conf")
    for name, m in result["held_out"].items():
        print(
            f"{name:18s} | {m['ece']:.3f} | {m['brier']:.3f} | {m['nll']:.3f} | "
            f"{m['auroc']:.3f} | {m['mean_confidence']:.3f}"
        )
    print("\nfeatures | n | AUROC raw | ECE (sd) | Brier | NLL | AUROC (logistic, held-out halves)")
    for row in result["signals"]:
        if "ece" not in row:
            print(f"{row['features']} | {row['n']} | not measured")
            continue
        raw_auc = f"{row['auroc_raw']:.3f}" if "auroc_raw" in row else "—"
        print(
            f"{row['features']} | {row['n']} | {raw_auc} | {row['ece']:.3f} ({row['ece_sd']:.3f})"
            f" | {row['brier']:.3f} | {row['nll']:.3f} | {row['auroc']:.3f}"
        )
    print(f"\n{result['seconds']} s")


if __name__ == "__main__":
    main()
