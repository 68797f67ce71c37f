"""Refit time and peak memory at 10k / 100k / 1M labels (store load + fit + save).

    python -m benchmarks.bench_refit [--sizes 10000 100000 1000000] [--db-dir /tmp]

Each size gets a fresh SQLite file filled with synthetic options-mode labels (insertion is set-up,
not timed), then one `run_refit` runs in a fresh child process, so its peak RSS
(`ru_maxrss`) is the refit's own: import + store load + arrays + fit + save. Printed as a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(url: str) -> None:
    from service.refit import RefitConfig, run_refit
    from service.store import Store

    store = Store.open(url, migrate_schema=False)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    outcome = run_refit(store, RefitConfig(max_age_s=None), "bench", "default", trigger="cli")
    total = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "status": outcome.status,
                "n": outcome.n_labels,
                "total_s": total,
                "baseline_mb": baseline_kb / 1024,
                "peak_mb": peak_kb / 1024,
                "temperature": outcome.temperature,
                **outcome.timings,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--db-dir", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return

    from service.store import Store
    from tests.refit.helpers import insert_labeled_options

    rows = []
    with tempfile.TemporaryDirectory(dir=args.db_dir) as tmp:
        for n in args.sizes:
            url = f"sqlite:///{Path(tmp) / f'bench-{n}.db'}"
            store = Store.open(url)
            t0 = time.perf_counter()
            insert_labeled_options(store, "bench", "default", n, true_t=2.0, seed=n)
            insert_s = time.perf_counter() - t0
            store.close()
            run = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_refit", "--child", url],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(run.stdout.strip().splitlines()[-1])
            rows.append((n, insert_s, result))
            Path(url.removeprefix("sqlite:///")).unlink()

    print(
        f"{'labels':>10} {'status':>10} {'load s':>8} {'fit s':>7} {'save s':>7} {'total s':>8} "
        f"{'peak RSS MB':>12} {'(+ over import)':>15} {'T':>6}   (set-up insert s)"
    )
    for n, insert_s, r in rows:
        print(
            f"{n:>10,} {r['status']:>10} {r.get('load_s', 0):>8.2f} {r.get('fit_s', 0):>7.2f} "
            f"{r.get('save_s', 0):>7.3f} {r['total_s']:>8.2f} {r['peak_mb']:>12.0f} "
            f"{r['peak_mb'] - r['baseline_mb']:>15.0f} {r['temperature'] or 0:>6.3f}   "
            f"({insert_s:.1f})"
        )


if __name__ == "__main__":
    main()
