"""Gateway overhead: the same load sent straight to an upstream and through the gateway.

Three processes, so nothing shares a GIL with the thing it measures: the upstream (by default
`benchmarks.fast_upstream`, a raw-asyncio server answering a fixed vLLM-shaped body with 8 tokens
x top-20 logprobs in a few tens of microseconds), the gateway (`calib serve`, SQLite store in a
temporary directory, predictions recorded as in production) and this process, the load generator
(`benchmarks.loadgen`, raw asyncio on uvloop). With `--pin` (default on a machine with 2+ CPUs)
the gateway is pinned to one CPU and the upstream and the load generator to the other
(`taskset`), so the direct and the gateway runs get the same CPU for load + upstream and the
gateway gets a CPU of its own. Other processes on the machine are not pinned away: the load
average is printed with the results.

For each concurrency and mode (non-streaming, streaming) the direct and the gateway runs
alternate `--repeat` times in the same run; the table shows the medians over repeats of p50/p99
latency (streaming: time to the first event, TTFT), the added latency (gateway minus direct, per
percentile), throughput (requests/s) and its ratio (gateway / direct), and the gateway process's
CPU time per request (from /proc; the steadiest figure on a shared machine).

    python -m benchmarks.bench_overhead                      # 1 16 64 256, both modes, 3 repeats
    python -m benchmarks.bench_overhead --quick              # bounded (< 1 min), 1 repeat
    python -m benchmarks.bench_overhead --engine http://127.0.0.1:8011/v1 --concurrency 1 8 \\
        --requests 40 --max-tokens 4                         # against a real vLLM engine
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks._table import table
from benchmarks.fast_upstream import loop_factory
from benchmarks.loadgen import LoadResult, run_load

ROOT = Path(__file__).resolve().parents[1]

QUESTION = "Which is right? A, B, C or D. Answer with a letter."


def bodies(model: str, max_tokens: int, stream: bool) -> tuple[dict, dict]:
    """(gateway body, direct body): the direct one is what the gateway sends upstream."""
    gateway = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": max_tokens,
        "calibration": {"options": ["A", "B", "C", "D"]},
    }
    if stream:
        gateway["stream"] = True
    direct = {k: v for k, v in gateway.items() if k != "calibration"}
    direct.update(logprobs=True, top_logprobs=20)
    return gateway, direct


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile in milliseconds (NaN when empty)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def scrape_overhead(base: str) -> tuple[float, float, int]:
    """(overhead seconds, request seconds, requests) summed from the gateway's own histograms.

    `calib_gateway_overhead_seconds` is the request's wall time minus the time spent waiting on
    the upstream, measured inside the gateway: against a slow, noisy engine it isolates the
    gateway's share far better than a difference of two end-to-end percentiles.
    """
    text = httpx.get(f"{base}/metrics", timeout=10).text
    totals = {"overhead": 0.0, "duration": 0.0, "count": 0.0}
    for line in text.splitlines():
        if 'endpoint="/v1/chat/completions"' not in line:
            continue
        name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
        if name == "calib_gateway_overhead_seconds_sum":
            totals["overhead"] += value
        elif name == "calib_request_duration_seconds_sum":
            totals["duration"] += value
        elif name == "calib_request_duration_seconds_count":
            totals["count"] += value
    return totals["overhead"], totals["duration"], int(totals["count"])


def _taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


@dataclass
class Row:
    mode: str
    concurrency: int
    requests: int
    direct_p50: float
    direct_p99: float
    gateway_p50: float
    gateway_p99: float
    direct_rps: float
    gateway_rps: float
    cpu_ms: float
    errors: int
    inside_ms: float = float("nan")  # mean overhead measured by the gateway itself
    inside_share: float = float("nan")  # its share of the gateway's request time

    @property
    def added_p50(self) -> float:
        return self.gateway_p50 - self.direct_p50

    @property
    def added_p99(self) -> float:
        return self.gateway_p99 - self.direct_p99

    @property
    def ratio(self) -> float:
        return self.gateway_rps / self.direct_rps if self.direct_rps else float("nan")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    """The upstream (unless external) and the gateway as subprocesses; the load from here."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        pin = args.pin and (os.cpu_count() or 1) >= 2
        self.gateway_cpus = "1" if pin else None
        self.load_cpus = "0" if pin else None
        if self.load_cpus:
            os.sched_setaffinity(0, {0})
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.tmp = Path(tempfile.mkdtemp(prefix="calib-bench-"))
        self.upstream: subprocess.Popen | None = None
        if args.engine:
            base = args.engine.rstrip("/")
        else:
            up_port = _free_port()
            base = f"http://127.0.0.1:{up_port}/v1"
            self.upstream = subprocess.Popen(
                [
                    *_taskset(self.load_cpus),
                    sys.executable,
                    "-m",
                    "benchmarks.fast_upstream",
                    "--port",
                    str(up_port),
                ],
                cwd=ROOT,
                env=env,
            )
        gw_port = _free_port()
        self.gateway = subprocess.Popen(
            [
                *_taskset(self.gateway_cpus),
                sys.executable,
                "-m",
                "clients.cli",
                "serve",
                "--port",
                str(gw_port),
                "--upstream",
                base,
                "--db",
                f"sqlite:///{self.tmp / 'c.db'}",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**env, "CALIB_DATA_DIR": str(self.tmp)},
            stdout=subprocess.DEVNULL,
            stderr=None if args.verbose else subprocess.DEVNULL,
        )
        _wait(f"{base}/models", self.upstream)
        _wait(f"http://127.0.0.1:{gw_port}/healthz", self.gateway)
        self.direct_url = f"{base}/chat/completions"
        self.gateway_base = f"http://127.0.0.1:{gw_port}"
        self.gateway_url = f"{self.gateway_base}/v1/chat/completions"
        self.model = args.model or httpx.get(f"{base}/models", timeout=10).json()["data"][0]["id"]

    def close(self) -> None:
        for proc in (self.gateway, self.upstream):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def measure(self, runner: asyncio.Runner, mode: str, concurrency: int) -> Row:
        args = self.args
        stream = mode == "stream"
        gateway_body, direct_body = bodies(self.model, args.max_tokens, stream)
        n = max(args.requests if concurrency > 1 else args.requests // 2, 4 * concurrency)
        warmup = min(n // 5, 200) if not args.engine else concurrency
        d_runs: list[LoadResult] = []
        g_runs: list[LoadResult] = []
        cpu: list[float] = []
        inside: list[tuple[float, float, int]] = []
        for _ in range(args.repeat):
            d_runs.append(
                runner.run(run_load(self.direct_url, direct_body, n, concurrency, warmup=warmup))
            )
            cpu0 = cpu_seconds(self.gateway.pid)
            before = scrape_overhead(self.gateway_base)
            g_runs.append(
                runner.run(
                    run_load(
                        self.gateway_url,
                        gateway_body,
                        n,
                        concurrency,
                        warmup=warmup,
                        check=b'"calibration"',
                    )
                )
            )
            done = len(g_runs[-1].latencies) + max(warmup, concurrency)
            cpu.append((cpu_seconds(self.gateway.pid) - cpu0) / done * 1000)
            after = scrape_overhead(self.gateway_base)
            inside.append(tuple(a - b for a, b in zip(after, before, strict=True)))  # type: ignore[arg-type]

        def lat(run: LoadResult) -> list[float]:
            return run.ttfts if stream else run.latencies

        return Row(
            mode=mode,
            concurrency=concurrency,
            requests=n,
            direct_p50=_median([pct(lat(r), 50) for r in d_runs]),
            direct_p99=_median([pct(lat(r), 99) for r in d_runs]),
            gateway_p50=_median([pct(lat(r), 50) for r in g_runs]),
            gateway_p99=_median([pct(lat(r), 99) for r in g_runs]),
            direct_rps=_median([r.rps for r in d_runs]),
            gateway_rps=_median([r.rps for r in g_runs]),
            cpu_ms=_median(cpu),
            errors=sum(r.errors for r in d_runs + g_runs),
            inside_ms=_median([o / n * 1000 for o, _, n in inside if n]),
            inside_share=_median([o / d for o, d, _ in inside if d]),
        )


def format_table(rows: list[Row], *, markdown: bool = False) -> str:
    head = [
        "mode",
        "conc",
        "reqs",
        "direct p50",
        "direct p99",
        "gateway p50",
        "gateway p99",
        "added p50",
        "added p99",
        "rps direct",
        "rps gateway",
        "ratio",
        "gw CPU/req",
        "overhead inside",
        "share",
        "errors",
    ]
    body = [
        [
            "stream (TTFT)" if r.mode == "stream" else "non-stream",
            str(r.concurrency),
            str(r.requests),
            f"{r.direct_p50:.2f} ms",
            f"{r.direct_p99:.2f} ms",
            f"{r.gateway_p50:.2f} ms",
            f"{r.gateway_p99:.2f} ms",
            f"{r.added_p50:.2f} ms",
            f"{r.added_p99:.2f} ms",
            f"{r.direct_rps:.0f}",
            f"{r.gateway_rps:.0f}",
            f"{r.ratio:.2f}",
            f"{r.cpu_ms:.2f} ms",
            f"{r.inside_ms:.2f} ms",
            f"{100 * r.inside_share:.1f} %",
            str(r.errors),
        ]
        for r in rows
    ]
    return table(head, body, markdown)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--modes", nargs="+", choices=["plain", "stream"], default=None)
    parser.add_argument("--repeat", type=int, default=3, help="direct/gateway pairs per cell")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--engine", help="OpenAI base URL of a real engine (not the fast upstream)")
    parser.add_argument("--model", help="model name (default: the upstream's first)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="don't use taskset")
    parser.add_argument("--quick", action="store_true", help="500 requests, 1 repeat")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    parser.add_argument("--verbose", action="store_true", help="show the gateway's stderr")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.repeat = 500, 1
    modes = args.modes or (["plain"] if args.engine else ["plain", "stream"])

    bench = Bench(args)
    rows: list[Row] = []
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            for mode in modes:
                for c in args.concurrency:
                    print(f"{mode}, concurrency {c} ...", flush=True)
                    rows.append(bench.measure(runner, mode, c))
    finally:
        bench.close()

    where = args.engine or "the fast upstream (benchmarks.fast_upstream)"
    pinning = (
        f"gateway on CPU {bench.gateway_cpus}, load generator + upstream on CPU {bench.load_cpus}"
        if bench.gateway_cpus
        else "not pinned"
    )
    print(
        f"\nGateway overhead vs. {where}: chat, options mode, max_tokens {args.max_tokens}, "
        f"medians of {args.repeat} repeat(s); {os.cpu_count()} CPUs, {pinning}; "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    print(format_table(rows))
    if args.markdown:
        print()
        print(format_table(rows, markdown=True))
    return rows


if __name__ == "__main__":
    main()
