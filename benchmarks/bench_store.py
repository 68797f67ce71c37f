"""Store growth: prediction-write throughput (SQLite, PostgreSQL) and refit cost vs. labels.

1. **Prediction writes.** Realistic options-mode `PredictionRecord`s (4 option logprobs,
   answer index, prompt hash) written (a) straight through `Store.insert_predictions` in batches
   of 64 / 256 / 1024, and (b) through the gateway's `PredictionWriter` (`submit` from the event
   loop, batches written in a worker thread, as in production): rows/s, the `submit` cost, and
   how the insert rate changes as the table grows (rate per successive slice of the inserts).
2. **Refit.** For 10k / 100k / 1M labels (options mode; predictions + feedback bulk-loaded into
   a SQLite file, stored as the gateway stores them), one `run_refit` in a fresh subprocess:
   wall and CPU time and peak RSS above the process's baseline (imports + open store), so every
   size starts from the same state.

PostgreSQL is a throwaway cluster started like `tests/pg.py` does (initdb + pg_ctl, fsync off —
so PostgreSQL figures are an upper bound for a durable server); skipped when the server
binaries are missing.

    python -m benchmarks.bench_store            # writes 200k/backend, refit 10k 100k 1M
    python -m benchmarks.bench_store --quick    # writes 20k/backend, refit 10k 100k (< 1 min)
    python -m benchmarks.bench_store --refit-only --refit-sizes 1000000 --refit-repeat 3

`--refit-repeat N` loads once and runs N refits, each in a fresh process on a fresh copy of the
loaded database (median reported, every run listed); each run also reports its CPU seconds,
steadier than wall time on a shared machine. The labels carry only the features the refit reads
(`option_logprobs`, `answer_index`), as since the first version of this benchmark;
`--full-features` adds every other key the gateway writes for an options-mode answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import pwd
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from benchmarks._table import table
from service.store import PredictionRecord, PredictionWriter, Store
from service.store.features import split_features
from service.store.records import utcnow
from service.store.schema import feedback as feedback_table
from service.store.schema import predictions as predictions_table

ROOT = Path(__file__).resolve().parents[1]
MODEL, TASK = "bench-model", "default"


def _record(i: int, rng: random.Random, prefix: str = "p") -> PredictionRecord:
    logprobs = sorted((rng.uniform(-6.0, 0.0) for _ in range(4)), reverse=True)
    return PredictionRecord(
        id=f"{prefix}-{i:09d}",
        model=MODEL,
        task=TASK,
        tenant="bench",
        mode="options",
        options=["A", "B", "C", "D"],
        idk_option=None,
        answer="A",
        raw_confidence=0.6,
        confidence=0.55,
        features={"option_logprobs": logprobs, "answer_index": 0, "upper_bound": [False] * 4},
        profile_version=0,
        prompt_hash=f"{i % 5000:064x}",
    )


# ----------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    """URL of a fresh database in a throwaway cluster, or None when PostgreSQL is missing."""
    from tests.pg import _free_port, _pg_bin

    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        yield None
        return
    user = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                user = name
                break
    root = Path(tempfile.mkdtemp(prefix="calib-bench-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    prefix = ["runuser", "-u", user, "--"] if user else []

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, cwd=root, timeout=120)

    port = _free_port()
    data = root / "data"
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(root / "log"),
        "-w",
        "start",
    )
    try:
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True
        ) as conn:
            conn.execute('CREATE DATABASE "bench"')
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench"
    finally:
        with contextlib.suppress(Exception):
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- writes


def bench_batches(url: str, total: int, batch: int, prefix: str) -> float:
    """rows/s of `insert_predictions` in batches of `batch`."""
    rng = random.Random(1)
    records = [_record(i, rng, prefix) for i in range(total)]
    store = Store.open(url)
    try:
        start = time.perf_counter()
        for i in range(0, total, batch):
            store.insert_predictions(records[i : i + batch])
        return total / (time.perf_counter() - start)
    finally:
        store.close()


def bench_growth(url: str, total: int, slices: int, batch: int = 256) -> list[tuple[int, float]]:
    """(table size after the slice, rows/s within the slice) for successive slices."""
    rng = random.Random(2)
    store = Store.open(url)
    out = []
    try:
        per = total // slices
        for s in range(slices):
            records = [_record(s * per + i, rng, "g") for i in range(per)]
            start = time.perf_counter()
            for i in range(0, per, batch):
                store.insert_predictions(records[i : i + batch])
            out.append(((s + 1) * per, per / (time.perf_counter() - start)))
    finally:
        store.close()
    return out


async def _writer_run(url: str, total: int) -> tuple[float, float]:
    rng = random.Random(3)
    records = [_record(i, rng, "w") for i in range(total)]
    store = await asyncio.to_thread(Store.open, url)
    writer = PredictionWriter(store, flush_interval_s=0.1, batch_size=256, buffer_limit=total + 1)
    await writer.start()
    try:
        start = time.perf_counter()
        submit_s = 0.0
        for i in range(0, total, 64):  # 64 "responses", then let the loop run
            t0 = time.perf_counter()
            for record in records[i : i + 64]:
                writer.submit(record)
            submit_s += time.perf_counter() - t0
            await asyncio.sleep(0)
        last, stalled_at = writer.pending, time.perf_counter()
        while writer.pending:
            await asyncio.sleep(0.005)
            if writer.pending != last:
                last, stalled_at = writer.pending, time.perf_counter()
            elif time.perf_counter() - stalled_at > 10:
                # Safety net only: the "stalled" stage seen in full runs was not this (pending
                # was 0; `close()` below hung, fixed in service/store/writer.py `_run`).
                task = writer._task
                print(
                    f"  PredictionWriter stalled with {writer.pending} pending "
                    f"(task done: {task.done() if task else None}, "
                    f"cancelled: {task.cancelled() if task and task.done() else None}); "
                    "flushing explicitly",
                    flush=True,
                )
                await writer.flush()
        elapsed = time.perf_counter() - start
        if writer.written < total and writer.dropped:
            raise RuntimeError(f"writer dropped {writer.dropped} records")
        return total / elapsed, submit_s / total * 1e6
    finally:
        await writer.close()
        await asyncio.to_thread(store.close)


def bench_writes(url: str, backend: str, total: int) -> tuple[list[list[str]], list[list[str]]]:
    rows = []
    for batch in (64, 256, 1024):
        rate = bench_batches(url, total, batch, f"b{batch}")
        rows.append([backend, f"insert_predictions, batch {batch}", f"{total}", f"{rate:,.0f}", ""])
    try:
        rate, submit_us = asyncio.run(asyncio.wait_for(_writer_run(url, total), 120))
        rows.append(
            [
                backend,
                "PredictionWriter (batch 256)",
                f"{total}",
                f"{rate:,.0f}",
                f"{submit_us:.1f}",
            ]
        )
    except TimeoutError:
        # Safety net only. The stall seen in full runs was `writer.close()` waiting forever for a
        # background task that had lost its cancellation (Python 3.11 `wait_for`; fixed in
        # service/store/writer.py). `close()` suppresses a cancellation aimed at itself, so that
        # hang ended here as a normal row after 120 s, not as "stalled".
        rows.append([backend, "PredictionWriter (batch 256)", f"{total}", "stalled (>120 s)", ""])
    growth = [
        [backend, f"{size:,}", f"{rate:,.0f}"]
        for size, rate in bench_growth(url, total * 2, slices=4)
    ]
    return rows, growth


# ----------------------------------------------------------------------------- refit


def _refit_features(lps: list[float], chosen: int, full: bool) -> dict[str, object]:
    """The features the refit reads; `full` adds every other key the gateway writes for an
    options-mode answer (`OptionScore`), which the refit does not read."""
    features: dict[str, object] = {"option_logprobs": lps, "answer_index": chosen}
    if full:
        features = {
            "options": ["A", "B", "C", "D"],
            **features,
            "truncated": [False] * 4,
            "answer": "ABCD"[chosen],
            "position": 2,
            "scoring": "path",
        }
    return features


def load_labels(url: str, n: int, *, full_features: bool = False) -> None:
    """Bulk-load `n` labeled options-mode predictions (predictions + feedback rows), stored as
    the gateway stores them (hot features in their columns, the rest JSON)."""
    store = Store.open(url)
    try:
        rng = random.Random(4)
        now = utcnow()
        chunk = 20_000
        with store.engine.begin() as conn:
            for start in range(0, n, chunk):
                preds, labels = [], []
                for i in range(start, min(n, start + chunk)):
                    logits = [rng.gauss(0.0, 2.0) for _ in range(4)]
                    top = max(logits)
                    norm = top + math.log(sum(math.exp(v - top) for v in logits))
                    lps = [v - norm for v in logits]
                    chosen = max(range(4), key=lps.__getitem__)
                    true = chosen if rng.random() < 0.7 else rng.randrange(4)
                    created = now - timedelta(seconds=n - i)
                    pid = f"r-{i:09d}"
                    features, packed, answer_index = split_features(
                        _refit_features(lps, chosen, full_features)
                    )
                    preds.append(
                        {
                            "id": pid,
                            "model": MODEL,
                            "task": TASK,
                            "tenant": "bench",
                            "mode": "options",
                            "options": ["A", "B", "C", "D"],
                            "idk_option": None,
                            "answer": "ABCD"[chosen],
                            "raw_confidence": 0.5,
                            "confidence": 0.5,
                            "features": features,
                            "option_logprobs": packed,
                            "answer_index": answer_index,
                            "profile_version": 0,
                            "prompt_hash": None,
                            "abstained": False,
                            "abstain_reason": None,
                            "request_content": None,
                            "created_at": created,
                        }
                    )
                    labels.append(
                        {
                            "prediction_id": pid,
                            "correct": true == chosen,
                            "label": "ABCD"[true],
                            "true_index": true,
                            "tenant": "bench",
                            "key_id": None,
                            "created_at": created,
                        }
                    )
                conn.execute(sa.insert(predictions_table), preds)
                conn.execute(sa.insert(feedback_table), labels)
    finally:
        store.close()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _rss_kb() -> int:
    return _status_kb("VmRSS:")


def _peak_rss_kb() -> int:
    """This process image's peak RSS. Not `ru_maxrss`: on Linux that carries the parent's peak
    across fork + exec, so a child of a big benchmark process reported the parent's 333 MB."""
    return _status_kb("VmHWM:")


def refit_child(url: str) -> None:
    """Run in a fresh process: one refit; prints JSON {seconds, status, n_labels, rss}."""
    from service.refit.job import RefitConfig, run_refit

    store = Store.open(url)
    base_kb = _rss_kb()
    start, cpu = time.perf_counter(), time.process_time()
    outcome = run_refit(store, RefitConfig(), MODEL, TASK)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_kb = _peak_rss_kb()
    store.close()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,  # less disturbed than wall time on a shared machine
                "timings": outcome.timings,
                "status": outcome.status,
                "reason": outcome.reason,
                "n_labels": outcome.n_labels,
                "base_mb": base_kb / 1024,
                "peak_mb": peak_kb / 1024,
            }
        )
    )


def _run_child(url: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_store", "--refit-child", url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _median_of(values: list[float]) -> str:
    shown = f"{statistics.median(values):.2f} s"
    if len(values) > 1:
        shown += " (" + ", ".join(f"{v:.2f}" for v in values) + ")"
    return shown


def bench_refit(
    sizes: list[int], *, repeat: int = 1, full_features: bool = False
) -> list[list[str]]:
    """Per size: load once, then `repeat` refits, each in a fresh process on a fresh copy of
    the loaded database (so every run starts from the same state); the median is reported."""
    rows = []
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="calib-bench-refit-"))
        loaded = tmp / "loaded.db"
        try:
            t0 = time.perf_counter()
            load_labels(f"sqlite:///{loaded}", n, full_features=full_features)
            load_s = time.perf_counter() - t0
            runs = []
            for r in range(repeat):
                copy = tmp / f"run-{r}.db"
                shutil.copyfile(loaded, copy)
                runs.append(_run_child(f"sqlite:///{copy}"))
                copy.unlink()
                seconds = float(runs[-1]["seconds"])  # type: ignore[arg-type]
                print(f"  refit {n:,} run {r + 1}: {seconds:.2f} s", flush=True)
            times = sorted(float(run["seconds"]) for run in runs)  # type: ignore[arg-type]
            above = sorted(
                float(run["peak_mb"]) - float(run["base_mb"])  # type: ignore[arg-type]
                for run in runs
            )
            cpus = sorted(float(run["cpu_seconds"]) for run in runs)  # type: ignore[arg-type]
            r = runs[0]
            rows.append(
                [
                    f"{n:,}",
                    _median_of(times),
                    _median_of(cpus),
                    f"{statistics.median(above):.0f} MB",
                    f"{statistics.median(float(x['peak_mb']) for x in runs):.0f} MB",  # type: ignore[arg-type]
                    f"{r['status']} ({r['n_labels']} labels)",
                    f"{load_s:.1f} s",
                ]
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


# ----------------------------------------------------------------------------- output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--writes", type=int, default=None, help="records per write run")
    parser.add_argument("--refit-sizes", type=int, nargs="*", default=None)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--refit-only", action="store_true", help="skip the write benchmarks")
    parser.add_argument(
        "--refit-repeat", type=int, default=1, help="refits per size (median reported)"
    )
    parser.add_argument(
        "--full-features",
        action="store_true",
        help="store every options-mode feature key the gateway writes, not only the refit's",
    )
    parser.add_argument("--refit-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.refit_child:
        refit_child(args.refit_child)
        return
    total = args.writes or (20_000 if args.quick else 200_000)
    sizes = (
        args.refit_sizes
        if args.refit_sizes is not None
        else ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    )

    write_rows: list[list[str]] = []
    growth_rows: list[list[str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="calib-bench-store-"))
    try:
        if not args.refit_only:
            print("SQLite writes ...", flush=True)
            rows, growth = bench_writes(f"sqlite:///{tmp / 'w.db'}", "SQLite", total)
            write_rows += rows
            growth_rows += growth
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.no_postgres and not args.refit_only:
        with postgres() as url:
            if url is None:
                print("PostgreSQL server binaries not found: skipped", flush=True)
            else:
                print("PostgreSQL writes ...", flush=True)
                rows, growth = bench_writes(url, "PostgreSQL", total)
                write_rows += rows
                growth_rows += growth
    print("refit ...", flush=True)
    refit_rows = bench_refit(sizes, repeat=args.refit_repeat, full_features=args.full_features)

    load = os.getloadavg()[0]
    features = "every options-mode key" if args.full_features else "the refit's keys only"
    for markdown in (False, True) if args.markdown else (False,):
        if write_rows:
            print(f"\nPrediction writes ({os.cpu_count()} CPUs, load average {load:.2f})\n")
            print(
                table(
                    ["store", "path", "records", "rows/s", "submit µs/record"], write_rows, markdown
                )
            )
            print("\nInsert rate as the table grows (batches of 256)\n")
            print(
                table(["store", "table size after slice", "rows/s in slice"], growth_rows, markdown)
            )
        print(
            f"\nRefit (options mode, SQLite, default RefitConfig, features: {features}; "
            f"fresh process per run; load average {load:.2f})\n"
        )
        print(
            table(
                [
                    "labels",
                    "refit time",
                    "refit CPU time",
                    "peak RSS above baseline",
                    "peak RSS",
                    "outcome",
                    "load time",
                ],
                refit_rows,
                markdown,
            )
        )


if __name__ == "__main__":
    main()
