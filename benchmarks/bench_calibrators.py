"""Speed of the calibrators package: refit-time math and the per-request path.

Run: ``python -m benchmarks.bench_calibrators`` (``--quick`` skips the slow grid on 100k).
Each figure is the best (and median) of several repeats with ``time.perf_counter``; on a shared
machine the best is the least disturbed estimate, the median shows the noise.

Targets (issue 2): temperature fit on 1M items < 1 s, ECE on 1M < 0.1 s, score_options < 50 µs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import log_softmax

from calibrators import (
    Profile,
    TemperatureScaler,
    apply_profile,
    expected_calibration_error,
    grid_search_temperature,
    score_options,
)


def _time(fn: Callable[[], Any], repeats: int, number: int = 1) -> tuple[float, float]:
    """(best, median) seconds per call over ``repeats`` rounds of ``number`` calls."""
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return min(rounds), statistics.median(rounds)


def _options_data(n: int, k: int = 4, true_t: float = 1.8, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, k))
    p = np.exp(log_softmax(z / true_t, axis=1))
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return log_softmax(z, axis=1), labels


def _vllm_content(rng: np.random.Generator) -> list[dict[str, Any]]:
    """A realistic chat `logprobs.content`: "The answer is (B)." with top-20 at every step."""
    vocab = ["The", " answer", " is", " (", "B", ")."]
    letters = [" A", " B", " C", " D", "A", "B", "C", "D", "(A", "(B"]
    filler = [f" tok{i}" for i in range(40)]
    content = []
    for token in vocab:
        others = list(dict.fromkeys(letters + filler))
        others = [t for t in others if t != token]
        picked = [token, *rng.choice(others, size=19, replace=False).tolist()]
        lps = np.sort(rng.normal(-6.0, 2.0, size=20))[::-1]
        lps[0] = -0.2
        top = [
            {"token": t, "logprob": float(lp), "bytes": list(t.encode())}
            for t, lp in zip(picked, lps, strict=True)
        ]
        content.append(
            {"token": token, "logprob": -0.2, "bytes": list(token.encode()), "top_logprobs": top}
        )
    return content


def run(quick: bool = False) -> list[tuple[str, float, float, str]]:
    rows: list[tuple[str, float, float, str]] = []

    for n in (10_000, 100_000, 1_000_000):
        logprobs, labels = _options_data(n)
        repeats = 7 if n < 1_000_000 else 5
        best, med = _time(lambda lp=logprobs, y=labels: TemperatureScaler().fit(lp, y), repeats)
        target = "< 1 s" if n == 1_000_000 else ""
        rows.append((f"temperature fit, {n:,} x 4", best, med, target))

    for n in (10_000,) if quick else (10_000, 100_000):
        logprobs, labels = _options_data(n)
        best, med = _time(lambda lp=logprobs, y=labels: grid_search_temperature(lp, y), 1)
        fit_best = next(r[1] for r in rows if r[0] == f"temperature fit, {n:,} x 4")
        rows.append(
            (f"grid search 0.01..9.99, {n:,} x 4", best, med, f"{best / fit_best:.0f}x fit")
        )

    rng = np.random.default_rng(1)
    conf = rng.beta(5, 2, 1_000_000)
    correct = (rng.random(conf.size) < conf).astype(np.int8)
    best, med = _time(lambda: expected_calibration_error(conf, correct), 15)
    rows.append(("ECE, 1,000,000 items", best, med, "< 0.1 s"))

    contents = [_vllm_content(rng) for _ in range(200)]
    options = ["A", "B", "C", "D"]

    def score_all() -> None:
        for content in contents:
            score_options(content, options)

    best, med = _time(score_all, 15)
    rows.append(("score_options / response (top-20)", best / 200, med / 200, "< 50 µs"))

    scores = [score_options(c, options) for c in contents]
    assert all(s.found for s in scores)
    profile = Profile(
        model="m",
        method="temperature",
        calibrator=TemperatureScaler.from_dict({"temperature": 1.7}).to_dict(),
        threshold=0.6,
    )

    def apply_all() -> None:
        for score in scores:
            apply_profile(profile, score)

    best, med = _time(apply_all, 15)
    rows.append(("apply_profile / response", best / 200, med / 200, ""))
    return rows


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:8.1f} ms"
    return f"{seconds:8.2f} s "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 100k grid search")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{width}}  {'best':>11}  {'median':>11}  target / note")
    print("-" * (width + 40))
    for name, best, med, note in rows:
        print(f"{name:<{width}}  {_fmt(best)}  {_fmt(med)}  {note}")


if __name__ == "__main__":
    main()
