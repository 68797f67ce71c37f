"""String options on the real engine: path scoring vs exact likelihoods (issue 20).

Country -> capital questions (`service.datasets`, real data), asked the way the embedded base
model answers: few-shot completion ("Q: What is the capital of X?\\nA:"), greedy, stop at the
newline, with the options listed in the prompt one per line ("- Lima"; `--format cloze`: the
bare question). Each question's options are its capital (the accented spelling when there is one:
"Bogotá", "Asunción") and three other capitals, chosen to be traps where possible: capitals
sharing the first word ("San José" / "San Juan" / "San Salvador", "Port Louis" / "Port Vila")
or the first three letters ("Bogotá" / "Bo..."), else from the same continent.

Every question goes through a real gateway (in this process, on loopback, in front of the
engine) twice: `calibration.scoring: "path"` and `"likelihood"`. Printed:

* matching: answers whose text names exactly one option (an independent reading: the options
  whose normalized text starts the answer's first line, at a word boundary), and how many of
  them the gateway scored as that option with probabilities summing to 1; answers naming none,
  and how many the gateway scored (must be 0);
* per scoring: accuracy of the answered, ECE (10 bins), AUROC of confidence for right vs wrong,
  argmax agreement between the two, mean |confidence difference|;
* latency: median gateway request time per scoring and the added time / ratio.

    python -m benchmarks.eval_option_scoring --engine http://127.0.0.1:8011/v1 [--n 120]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks._gateway import InThreadGateway
from calibrators import SCORINGS, auroc, expected_calibration_error
from service.datasets.countries import FEW_SHOT_COUNTRIES, Country, countries, normalize

SHOTS = (
    "Q: What is the capital of Germany?\nA: Berlin\n"
    "Q: What is the capital of Japan?\nA: Tokyo\n"
    "Q: What is the capital of Italy?\nA: Rome\n"
)
# The choices listed in the prompt, one per line (the way eval_idk asks the base model).
LISTED_SHOTS = (
    "Q: What is the capital of Germany?\n- Munich\n- Berlin\n- Vienna\n- Hamburg\nA: Berlin\n\n"
    "Q: What is the capital of Japan?\n- Tokyo\n- Osaka\n- Seoul\n- Kyoto\nA: Tokyo\n\n"
    "Q: What is the capital of Canada?\n- Toronto\n- Vancouver\n- Montreal\n- Ottawa\n"
    "A: Ottawa\n\n"
)


@dataclass
class Item:
    country: str
    prompt: str
    options: list[str]
    gold: str


@dataclass
class Result:
    text: str
    answer: str | None
    confidence: float | None
    option_probs: dict[str, float] | None
    scoring: str | None
    seconds: float


@dataclass
class Tally:
    named_one: int = 0
    scored_as_named: int = 0
    sums_to_one: int = 0
    named_none: int = 0
    scored_when_none: int = 0
    named_several: int = 0
    mismatches: list[str] = field(default_factory=list)


def _display(country: Country) -> str:
    accented = [a for a in country.aliases if normalize(a) == normalize(country.capital)]
    return (accented[0] if accented else country.capital).strip()


def build_items(n: int, seed: int, listed: bool = True) -> list[Item]:
    """``n`` questions with trap options (first word or first letters shared)."""
    rng = random.Random(seed)
    pool = [c for c in countries() if c.name not in FEW_SHOT_COUNTRIES and c.capital.strip()]
    capitals = sorted({_display(c) for c in pool})

    # Questions with shared-prefix traps first (they are what this measures), then the rest.
    def traps(c: Country) -> list[str]:
        mine = _display(c)
        first = mine.split()[0]
        same_word = [x for x in capitals if x != mine and x.split()[0] == first]
        same_start = [x for x in capitals if x != mine and x[:3] == mine[:3]]
        return list(dict.fromkeys(same_word + same_start))

    trapped = [c for c in pool if traps(c)]
    plain = [c for c in pool if not traps(c)]
    rng.shuffle(trapped)
    rng.shuffle(plain)
    items = []
    for c in (trapped + plain)[:n]:
        gold = _display(c)
        chosen = traps(c)[:2]
        near = [
            _display(o)
            for o in pool
            if o.continent == c.continent and _display(o) not in (gold, *chosen)
        ]
        rng.shuffle(near)
        options = [gold, *chosen, *near][:4]
        rng.shuffle(options)
        if listed:
            choices = "".join(f"- {o}\n" for o in options)
            prompt = f"{LISTED_SHOTS}Q: What is the capital of {c.name}?\n{choices}A:"
        else:
            prompt = f"{SHOTS}Q: What is the capital of {c.name}?\nA:"
        items.append(Item(c.name, prompt, options, gold))
    return items


def names(text: str, options: Sequence[str]) -> list[str]:
    """Independent reading: the options whose normalized text starts the first line."""
    line = normalize(text.strip().splitlines()[0] if text.strip() else "")
    return [o for o in options if line == normalize(o) or line.startswith(normalize(o) + " ")]


async def ask(client: httpx.AsyncClient, model: str, item: Item, scoring: str) -> Result:
    body = {
        "model": model,
        "prompt": item.prompt,
        "max_tokens": 8,
        "temperature": 0,
        "stop": ["\n"],
        "calibration": {"options": item.options, "scoring": scoring, "abstain": "off"},
    }
    t0 = time.perf_counter()
    response = await client.post("/completions", json=body)
    seconds = time.perf_counter() - t0
    response.raise_for_status()
    data = response.json()
    cal = data["calibration"]
    return Result(
        data["choices"][0]["text"],
        cal.get("answer"),
        cal.get("confidence"),
        cal.get("option_probs"),
        cal.get("scoring"),
        seconds,
    )


def check(items: list[Item], results: list[Result], tally: Tally) -> None:
    for item, r in zip(items, results, strict=True):
        named = names(r.text, item.options)
        # "New York" and "New York City" both start "New York City ...": the longest is named.
        longest = [o for o in named if not any(o != x and x.startswith(o) for x in named)]
        if len(longest) == 1:
            tally.named_one += 1
            if r.answer == longest[0] and r.confidence is not None:
                tally.scored_as_named += 1
            else:
                tally.mismatches.append(f"{item.country}: {r.text!r} -> {r.answer!r}")
            if r.option_probs and abs(sum(r.option_probs.values()) - 1.0) < 1e-9:
                tally.sums_to_one += 1
        elif not named:
            tally.named_none += 1
            if r.answer is not None or r.confidence is not None:
                tally.scored_when_none += 1
                tally.mismatches.append(f"{item.country}: {r.text!r} -> {r.answer!r} (none)")
        else:
            tally.named_several += 1


def quality(items: list[Item], results: list[Result]) -> dict[str, float]:
    scored = [(i, r) for i, r in zip(items, results, strict=True) if r.confidence is not None]
    if not scored:
        return {"n": 0}
    conf = np.array([r.confidence for _, r in scored])
    right = np.array([r.answer == i.gold for i, r in scored], dtype=float)
    both = 0 < right.sum() < len(right)
    return {
        "n": len(scored),
        "accuracy": float(right.mean()),
        "ece": float(expected_calibration_error(conf, right, n_bins=10)),
        "auroc": float(auroc(conf, right)) if both else float("nan"),
        "mean_conf": float(conf.mean()),
    }


async def run(engine: str, model: str, n: int, seed: int, listed: bool) -> str:
    items = build_items(n, seed, listed)
    out: dict[str, list[Result]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        InThreadGateway.for_engine(engine, Path(tmp), api_root=True) as gateway,
    ):
        async with httpx.AsyncClient(base_url=gateway, timeout=300) as client:
            await ask(client, model, items[0], "likelihood")  # warm the engine and the pool
            for scoring in SCORINGS:
                out[scoring] = []
            for item in items:  # alternate, one at a time: latencies see the same engine load
                for scoring in SCORINGS:
                    out[scoring].append(await ask(client, model, item, scoring))
    return report(items, out)


def report(items: list[Item], out: dict[str, list[Result]]) -> str:
    lines = [f"{len(items)} country -> capital questions, 4 string options each (traps)", ""]
    if "\n- " in items[0].prompt:
        lines[0] += ", the options listed in the prompt"
    else:
        lines[0] += ", cloze prompt (options not shown)"
    lines.append("| scoring | named one | scored as it | sums to 1 | named none | scored | "
                 "accuracy | ECE | AUROC | mean conf | p50 latency |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    p50 = {}
    mismatches = []
    for scoring in SCORINGS:
        tally = Tally()
        check(items, out[scoring], tally)
        mismatches += [f"[{scoring}] {m}" for m in tally.mismatches]
        q = quality(items, out[scoring])
        p50[scoring] = statistics.median(r.seconds for r in out[scoring])
        lines.append(
            f"| {scoring} | {tally.named_one} | {tally.scored_as_named} | {tally.sums_to_one} | "
            f"{tally.named_none} | {tally.scored_when_none} | {q.get('accuracy', 0):.3f} | "
            f"{q.get('ece', float('nan')):.3f} | {q.get('auroc', float('nan')):.3f} | "
            f"{q.get('mean_conf', float('nan')):.3f} | {p50[scoring] * 1000:.0f} ms |"
        )
    pairs = [
        (a, b)
        for a, b in zip(out["path"], out["likelihood"], strict=True)
        if a.option_probs and b.option_probs
    ]
    agree = sum(max(a.option_probs, key=a.option_probs.get) == max(b.option_probs,
                key=b.option_probs.get) for a, b in pairs)  # fmt: skip
    diff = [abs(a.confidence - b.confidence) for a, b in pairs]
    lines += [
        "",
        f"argmax agreement path vs likelihood: {agree}/{len(pairs)}"
        f" ({agree / max(len(pairs), 1):.1%}); mean |confidence difference|: "
        f"{statistics.fmean(diff) if diff else float('nan'):.3f}",
        "added latency (likelihood - path, medians): "
        f"{(p50['likelihood'] - p50['path']) * 1000:.0f} ms, "
        f"ratio {p50['likelihood'] / p50['path']:.2f}",
    ]
    if mismatches:
        lines += ["", "mismatches:", *mismatches]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="http://127.0.0.1:8011/v1")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--format",
        choices=["listed", "cloze"],
        default="listed",
        help="list the options in the prompt (default) or ask the bare cloze question",
    )
    args = parser.parse_args(argv)
    print(asyncio.run(run(args.engine, args.model, args.n, args.seed, args.format == "listed")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
