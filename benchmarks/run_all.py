"""`make bench`: the quick variant of every benchmark, one after the other, with their tables.

Bounded (about 3-4 minutes on a 2-core machine): gateway overhead against the fast upstream
(500 requests per cell, 1 repeat), calibrator math (`--quick`), prediction writes and refit at
10k / 100k labels (`--quick`). The full variants, the real-engine comparison and the 1M-label
refit are run by hand; their commands are in docs/performance.md.

    python -m benchmarks.run_all [--skip overhead calibrators store]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

QUICK = {
    "overhead": ["-m", "benchmarks.bench_overhead", "--quick"],
    "calibrators": ["-m", "benchmarks.bench_calibrators", "--quick"],
    "store": ["-m", "benchmarks.bench_store", "--quick"],
}
TIMEOUT_S = {"overhead": 180, "calibrators": 120, "store": 240}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(QUICK))
    args = parser.parse_args(argv)
    failed = []
    for name, cmd in QUICK.items():
        if name in args.skip:
            continue
        print(f"\n=== {name}: python {' '.join(cmd)}\n", flush=True)
        start = time.monotonic()
        try:
            code = subprocess.run(
                [sys.executable, *cmd], cwd=ROOT, timeout=TIMEOUT_S[name]
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
            print(f"{name}: timed out after {TIMEOUT_S[name]} s", flush=True)
        print(f"=== {name}: {time.monotonic() - start:.0f} s, exit {code}", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
