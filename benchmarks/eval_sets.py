"""Prediction sets on the real engine: empirical coverage and set size for targets 0.8/0.9/0.95.

The project's multiple-choice questions (`service.datasets`, what `calib dataset build` writes,
asked as the demo's ``mcq`` task: the capital among four choices plus "I don't know", invented
countries mixed in, answers restricted to the choices; `clients.demo.questions`) go through a
real gateway (this process, loopback) in front of the engine:

1. the question sets of ``--seeds`` are pooled and split at random into a labeled part and a
   fresh part (``--train-fraction``);
2. the labeled part is asked, its true options are posted as feedback, and one refit fits the
   temperature on its fit part and the conformal table on its held-out part (the refit's own
   split, ``refit_holdout_fraction``);
3. every fresh question is asked once with ``calibration.set_coverage`` = 0.9; the coverage is
   the share of ``prediction_set`` holding the true option. The sets for the other targets are
   built from the same responses' ``option_probs`` with the active profile's conformal table and
   `calibrators.prediction_set` — the gateway's own code path, checked to give exactly the
   gateway's sets at 0.9 (asking every question three times would triple the engine time).

``--scoring path`` (default, as the demo serves it) or ``likelihood`` (each option's full
likelihood after the prompt: one more engine request per question). Path scoring under vLLM's
structured outputs can read a masked continuation token as logprob -9999 (vLLM's JSON clamp of
-inf, for a multi-token option that is not the generated one); one such labeled item can push
the fitted temperature to its upper bound (measured once on seed 0 alone: T = 20).

    python -m benchmarks.eval_sets --engine http://127.0.0.1:8011/v1 [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks._gateway import InThreadGateway
from calibrators import Profile, prediction_set
from clients.demo.questions import DemoItem, demo_items

TARGETS = (0.8, 0.9, 0.95)
ASKED = 0.9  # the target the gateway is asked for; the others reuse its option_probs
TASK = "mcq-sets"


def mcq_items(seeds: Sequence[int], n: int) -> list[DemoItem]:
    items: list[DemoItem] = []
    for seed in seeds:
        items += [
            DemoItem(**{**item.__dict__, "id": f"s{seed}-{item.id}"})
            for item in demo_items(seed, n)
            if item.task == "mcq"
        ]
    return items


async def ask(
    client: httpx.AsyncClient,
    model: str,
    item: DemoItem,
    coverage: float | None,
    scoring: str,
    constrain: bool = True,
) -> dict[str, Any]:
    calibration: dict[str, Any] = {
        "task": TASK,
        "scoring": scoring,
        "mode": "options",
        "options": item.options,
        "idk_option": item.idk_option,
        "abstain": "off",
    }
    if coverage is not None:
        calibration["set_coverage"] = coverage
    body = {
        "model": model,
        "prompt": item.prompt,
        "max_tokens": 12,
        "temperature": 0,
        "stop": ["\n"],
        **(item.extra_body if constrain else {}),
        "calibration": calibration,
    }
    response = await client.post("/v1/completions", json=body)
    if response.status_code != 200:  # counted, not fatal: one engine error must not end a run
        return {"error": f"{response.status_code}: {response.text[:300]}"}
    calibration_out: dict[str, Any] = response.json()["calibration"]
    return calibration_out


async def ask_all(
    client: httpx.AsyncClient,
    model: str,
    jobs: list[tuple[DemoItem, float | None]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(args.concurrency)

    async def one(item: DemoItem, coverage: float | None) -> dict[str, Any]:
        async with gate:
            return await ask(client, model, item, coverage, args.scoring, args.constrain)

    return list(await asyncio.gather(*(one(item, coverage) for item, coverage in jobs)))


async def run(args: argparse.Namespace) -> str:
    items = mcq_items(args.seeds, args.n)
    random.Random(args.split_seed).shuffle(items)
    cut = int(len(items) * args.train_fraction)
    labeled, fresh = items[:cut], items[cut:]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        gateway = InThreadGateway.for_engine(
            args.engine, args.data_dir or Path(tmp), refit_executor="thread"
        )
        with gateway as url:
            return await _run(args, gateway, url, labeled, fresh, t0)


async def _run(
    args: argparse.Namespace,
    gateway: InThreadGateway,
    url: str,
    labeled: list[DemoItem],
    fresh: list[DemoItem],
    t0: float,
) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        cals = await ask_all(client, args.model, [(i, None) for i in labeled], args)
        feedback = [
            {"id": cal["id"], "label": item.gold}
            for item, cal in zip(labeled, cals, strict=True)
            if cal.get("answer") is not None
        ]
        for start in range(0, len(feedback), 500):
            posted = await client.post("/v1/feedback", json=feedback[start : start + 500])
            posted.raise_for_status()
        refit = await client.post(
            f"/v1/calibration/models/{args.model}/refit", params={"task": TASK}
        )
        refit.raise_for_status()
        outcome = refit.json()
        if outcome["status"] != "activated":
            return (
                f"refit not activated: {outcome['status']}: {outcome['reason']} "
                f"(T = {outcome.get('temperature')}, metrics {outcome.get('metrics')})"
            )
        answers = await ask_all(client, args.model, [(i, ASKED) for i in fresh], args)
    profile = gateway.app.state.services.store.active_profile(args.model, TASK)
    seconds = time.perf_counter() - t0
    return report(args, labeled, fresh, outcome, profile, answers, seconds)


def report(
    args: argparse.Namespace,
    labeled: list[DemoItem],
    fresh: list[DemoItem],
    outcome: dict[str, Any],
    profile: Profile,
    answers: list[dict[str, Any]],
    seconds: float,
) -> str:
    metrics = outcome["metrics"]
    conformal = metrics.get("conformal", {})
    lines = [
        f"engine {args.engine} model {args.model}: mcq questions of seeds {list(args.seeds)} "
        f"(n={args.n} each): {len(labeled)} labeled, {len(fresh)} fresh",
        f"refit: T = {outcome['temperature']:.3f}, {metrics['n_fit']} fit / "
        f"{metrics['n_heldout']} held-out labels; conformal table n = {conformal.get('n')}, "
        f"held-out accuracy {metrics['accuracy']:.3f}",
        "",
        "| target | coverage | 95 % interval | mean set size | share size 1 | scored |",
        "|---|---|---|---|---|---|",
    ]
    table = profile.conformal_table
    assert table is not None
    scored = [(i, c) for i, c in zip(fresh, answers, strict=True) if c.get("prediction_set")]
    same = sum(
        prediction_set(c["option_probs"], table.quantile(ASKED)) == c["prediction_set"]
        for _, c in scored
    )
    for target in TARGETS:
        rows = [
            (item, {"prediction_set": prediction_set(cal["option_probs"], table.quantile(target))})
            for item, cal in scored
        ]
        n = len(rows)
        if n == 0:
            lines.append(f"| {target} | - | - | - | - | 0 |")
            continue
        covered = sum(item.gold in cal["prediction_set"] for item, cal in rows)
        sizes = [len(cal["prediction_set"]) for _, cal in rows]
        p = covered / n
        half = 1.96 * math.sqrt(p * (1 - p) / n)
        lines.append(
            f"| {target} | {p:.3f} | [{p - half:.3f}, {p + half:.3f}] | "
            f"{sum(sizes) / n:.2f} of {len(rows[0][0].options or [])} | "
            f"{sizes.count(1) / n:.2f} | {n}/{len(fresh)} |"
        )
    errors = [c["error"] for c in answers if "error" in c]
    if errors:
        lines += ["", f"{len(errors)} fresh requests failed, e.g. {errors[0]}"]
    lines += [
        "",
        f"scoring {args.scoring}, structured outputs {'on' if args.constrain else 'off'}; "
        f"the gateway was asked at {ASKED}: its sets equal the "
        f"table's on {same}/{len(scored)}; wall time {seconds:.0f} s "
        f"(concurrency {args.concurrency})",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--engine", default="http://127.0.0.1:8011/v1")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--scoring", choices=["likelihood", "path"], default="path")
    parser.add_argument("--n", type=int, default=200, help="mcq questions per seed (demo_items)")
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--no-constrain",
        dest="constrain",
        action="store_false",
        help="no structured outputs: the answer is free, an answer naming no option has no set",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the gateway's store")
    args = parser.parse_args(argv)
    print(asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
