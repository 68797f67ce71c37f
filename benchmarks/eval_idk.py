"""Abstention on the real engine: the IDK option, an optimized prompt, a confidence threshold.

Answerable questions (country -> capital, real) and unanswerable ones (invented countries) from
`service.datasets`, asked the way the embedded base model answers well: few-shot completion,
the choices listed one per line ("- Lima"), the answer given as the string (docs/datasets.md).
Half of the questions (stratified) are for fitting (the prompt search and the threshold), the
other half held out; the table is on the held-out half. Conditions:

* no IDK option — the model must name a capital;
* IDK option — the gateway's IDK choice ("- I don't know") is shown and scored;
* IDK option + optimized prompt — a prompt-optimization job (`service.prompt_opt`, the same code
  `calib optimize-prompt` runs) searches on the fitting half with the IDK option shown; the
  best prompt it finds is injected the gateway's way (a prefix of the completion prompt);
* threshold only — no IDK option; abstain when confidence < tau, tau chosen on the fitting half
  with `calibrators.select_threshold` (Learn-Then-Test, target selective risk, delta 0.1);
* both — IDK option + optimized prompt + a threshold chosen the same way for that condition.

Answering an invented country's question is an error; abstaining on a real one is not an error
but lowers coverage. Requests are replayed straight to the engine with the gateway's own
injection functions (`service.prompt_opt.Replayer`), greedy, top-20 logprobs.

    python -m benchmarks.eval_idk                         # starts the embedded engine
    python -m benchmarks.eval_idk --engine http://127.0.0.1:8011/v1
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from calibrators import select_threshold
from service.datasets import build_question_set
from service.prompt_opt import (
    JobConfig,
    LabeledItem,
    Replayer,
    create_job,
    run_job,
    split_items,
)
from service.store import Store

IDK_TEXT = "I don't know"
SHOTS = (
    "Q: What is the capital of Germany?\n- Munich\n- Berlin\n- Vienna\n- Hamburg\nA: Berlin\n\n"
    "Q: What is the capital of Japan?\n- Tokyo\n- Osaka\n- Seoul\n- Kyoto\nA: Tokyo\n\n"
    "Q: What is the capital of Canada?\n- Toronto\n- Vancouver\n- Montreal\n- Ottawa\n"
    "A: Ottawa\n\n"
)
SEEDS = [
    "The answer might be",
    "The answer must be",
    f"If you do not know the country, answer {IDK_TEXT}.",
]


def build_items(answerable: int, invented: int, seed: int, idk: bool) -> list[LabeledItem]:
    questions = build_question_set(seed=seed, n=answerable, forms=("options",))
    questions += build_question_set(seed=seed, n=invented, forms=("idk",))
    items = []
    for q in questions:
        choices = [c for c in q.choices or [] if c != IDK_TEXT]
        listing = "\n".join(f"- {c}" for c in choices)
        gold = q.choices[q.options.index(q.answer)] if q.answerable else IDK_TEXT
        options = [*choices, IDK_TEXT] if idk else choices
        if not idk and not q.answerable:
            gold = "__none__"  # no right option: answering is an error, only abstaining is right
            options = [*choices, gold]
        items.append(
            LabeledItem(
                id=q.id,
                prompt=f"{SHOTS}Q: What is the capital of {q.subject}?\n{listing}\nA:",
                options=options,
                answer=gold,
                idk_option=IDK_TEXT if idk else None,
                add_idk=idk,
                idk_text=IDK_TEXT if idk else None,
                answerable=q.answerable,
            )
        )
    random.Random(seed).shuffle(items)
    return items


@dataclass
class Row:
    name: str
    abstain_answerable: float
    abstain_unanswerable: float
    coverage: float
    risk: float
    accuracy_answered: float
    threshold: float | None


def table_row(name, items, results, threshold: float | None) -> Row:
    abst_a = abst_u = n_a = n_u = answered = errors = 0
    for item, r in zip(items, results, strict=True):
        abstained = r.abstained or (threshold is not None and r.confidence < threshold)
        if item.answerable:
            n_a += 1
            abst_a += abstained
        else:
            n_u += 1
            abst_u += abstained
        if not abstained:
            answered += 1
            errors += (not item.answerable) or not r.correct
    return Row(
        name,
        abst_a / max(n_a, 1),
        abst_u / max(n_u, 1),
        answered / max(len(items), 1),
        errors / answered if answered else 0.0,
        1 - errors / answered if answered else float("nan"),
        threshold,
    )


def choose_threshold(items, results, target_risk: float) -> float:
    """tau on the fitting half: correct = answerable and right (abstaining via IDK excluded)."""
    conf = [r.confidence for r, it in zip(results, items, strict=True) if not r.abstained]
    ok = [
        bool(it.answerable and r.correct)
        for r, it in zip(results, items, strict=True)
        if not r.abstained
    ]
    return float(select_threshold(conf, ok, target_risk=target_risk, delta=0.1).threshold)


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| condition | abstain (answerable) | abstain (invented) | coverage | selective risk | "
        "tau |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        tau = "—" if r.threshold is None else f"{r.threshold:.2f}"
        lines.append(
            f"| {r.name} | {r.abstain_answerable:.2f} | {r.abstain_unanswerable:.2f} | "
            f"{r.coverage:.2f} | {r.risk:.2f} | {tau} |"
        )
    return "\n".join(lines)


async def evaluate(args: argparse.Namespace, base_url: str, model: str) -> str:
    plain = build_items(args.answerable, args.invented, args.seed, idk=False)
    with_idk = build_items(args.answerable, args.invented, args.seed, idk=True)
    fit_ids = {i.id for i in split_items(plain, 0.5, args.seed)[0]}
    fit_p = [i for i in plain if i.id in fit_ids]
    test_p = [i for i in plain if i.id not in fit_ids]
    fit_i = [i for i in with_idk if i.id in fit_ids]
    test_i = [i for i in with_idk if i.id not in fit_ids]

    async with httpx.AsyncClient(timeout=120) as client:
        replay = Replayer(client, base_url, model, concurrency=args.concurrency)
        t0 = time.monotonic()

        # Prompt search with the IDK option shown, on the fitting half, through the real job.
        with tempfile.TemporaryDirectory() as tmp:
            store = Store.open(f"sqlite:///{Path(tmp) / 'calib.db'}")
            search, heldout = split_items(fit_i, 0.3, args.seed)
            config = JobConfig(
                seeds=SEEDS, k=args.k, m=args.m, n=args.n, budget=args.budget,
                concurrency=args.concurrency, upstream=base_url, served_model=model,
                paraphraser_url=base_url, paraphraser_model=model,
            )  # fmt: skip
            job_id = create_job(store, "bench", "default", config, search, heldout)
            view = await run_job(store, job_id, client=client)
            store.close()
        result = view["result"]
        prompt = result["best_prompt"]
        search_log = [
            f"  round {h['round']}: acc {h['accuracy']:.3f} ECE {h['ece']:.3f}  {h['prompt']!r}"
            for h in view["history"]
        ]

        no_idk_fit = await replay.run(fit_p, None)
        no_idk = await replay.run(test_p, None)
        idk = await replay.run(test_i, None)
        both_fit = await replay.run(fit_i, prompt)
        idk_prompt = await replay.run(test_i, prompt)
        tau_plain = choose_threshold(fit_p, no_idk_fit, args.target_risk)
        tau_both = choose_threshold(fit_i, both_fit, args.target_risk)
        elapsed = time.monotonic() - t0

    rows = [
        table_row("no IDK option", test_p, no_idk, None),
        table_row("IDK option", test_i, idk, None),
        table_row("IDK option + optimized prompt", test_i, idk_prompt, None),
        table_row("threshold only", test_p, no_idk, tau_plain),
        table_row("both (IDK + prompt + threshold)", test_i, idk_prompt, tau_both),
    ]
    n_test_a = sum(i.answerable for i in test_p)
    lines = [
        markdown(rows),
        "",
        f"held out: {n_test_a} answerable + {len(test_p) - n_test_a} invented questions; "
        f"fitting half: {len(fit_p)}; model {model}; {replay.requests} scored requests "
        f"+ search; {elapsed:.0f} s",
        f"optimized prompt: {prompt!r} (job {result['search']['evaluations']} evaluations, "
        f"held-out decision: {'activated' if result['activated'] else 'rejected'} — "
        f"{result.get('reason')})",
        f"threshold: LTT, target selective risk {args.target_risk}, delta 0.1 "
        "(tau > 1 means no threshold was certified: abstain on everything)",
        "search history:",
        *search_log,
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", help="OpenAI base URL of a running engine (…/v1).")
    parser.add_argument("--model", default=None, help="Served model name (default: the first).")
    parser.add_argument("--answerable", type=int, default=120)
    parser.add_argument("--invented", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--target-risk", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)

    stop = None
    base_url = args.engine
    if base_url is None:
        from service import engine as embedded
        from service.engine import EngineLayout, EngineSettings

        layout = EngineLayout.default()
        settings = EngineSettings(host="127.0.0.1", port=embedded.free_port())
        if settings.uses_embedded_model and settings.python is None:
            embedded.prepare(layout, settings)
        info = embedded.start(settings, layout)
        base_url, model = info.base_url, info.served_model_name

        def stop() -> None:
            embedded.stop(layout, info.port)

    else:
        base_url = base_url.rstrip("/")
        model = args.model or httpx.get(f"{base_url}/models", timeout=10).json()["data"][0]["id"]
    try:
        print(asyncio.run(evaluate(args, base_url, args.model or model)))
    finally:
        if stop is not None:
            stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
