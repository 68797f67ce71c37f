"""Gateway overhead: the same load sent straight to the upstream double and through the gateway.

Both servers run as their own processes (`python -m tests.upstream_double`, `calib serve`), so the
load generator does not share a GIL with them. The double answers instantly with a realistic body
(8 tokens x top-20 logprobs), so the difference is the gateway's own cost: parse, validate,
inject, forward over a pooled connection, score, calibrate, record, serialize.

    python -m benchmarks.bench_overhead [--requests 2000] [--concurrency 1 16 64]

Prints, per concurrency: p50/p99 latency direct and through the gateway, the added latency
(difference of the percentiles) and the throughput ratio (gateway / direct). The numbers depend
on the machine and on what else runs on it (a vLLM engine on the same cores, for instance); the
last column, the gateway process's CPU time per request, is the steadiest of them.
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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

BODY = {
    "model": "test-model",
    "messages": [
        {"role": "user", "content": "Which is right? A, B, C or D. Answer with a letter."}
    ],
    "max_tokens": 8,
    "calibration": {"options": ["A", "B", "C", "D"]},
}
# What the gateway sends upstream, so the direct run does the same work on the double's side.
DIRECT_BODY = {
    **{k: v for k, v in BODY.items() if k != "calibration"},
    "logprobs": True,
    "top_logprobs": 20,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def _load(url: str, body: dict, n: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(min(50, n)):  # warm-up: connections, caches
            (await client.post(url, json=body)).raise_for_status()
        queue = iter(range(n))

        async def worker() -> None:
            for _ in queue:
                t0 = time.perf_counter()
                response = await client.post(url, json=body)
                latencies.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.text}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, n / elapsed


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0.0 elsewhere).

    CPU per request is the number that survives a noisy machine: wall-clock latency on shared
    cores measures the neighbours as much as the gateway.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    up_port, gw_port = _free_port(), _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="calib-bench-"))
    double = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream_double", "--port", str(up_port)], cwd=ROOT, env=env
    )
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clients.cli",
            "serve",
            "--port",
            str(gw_port),
            "--upstream",
            f"http://127.0.0.1:{up_port}/v1",
            "--db",
            f"sqlite:///{tmp / 'c.db'}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**env, "CALIB_DATA_DIR": str(tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(f"http://127.0.0.1:{up_port}/v1/models", double)
        _wait(f"http://127.0.0.1:{gw_port}/healthz", gateway)
        direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        gateway_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        rows = []
        for c in args.concurrency:
            n = max(args.requests if c > 1 else args.requests // 4, 4 * c)
            print(f"concurrency {c}: {n} requests direct, then through the gateway", flush=True)
            d_lat, d_rps = asyncio.run(_load(direct_url, DIRECT_BODY, n, c))
            cpu0 = _cpu_seconds(gateway.pid)
            g_lat, g_rps = asyncio.run(_load(gateway_url, BODY, n, c))
            cpu_ms = (_cpu_seconds(gateway.pid) - cpu0) / (n + min(50, n)) * 1000
            rows.append((c, n, d_lat, d_rps, g_lat, g_rps, cpu_ms))
    finally:
        for proc in (gateway, double):
            proc.terminate()
            proc.wait(timeout=15)

    print(
        f"\nGateway overhead vs. the upstream double ({os.cpu_count()} CPUs, "
        f"chat, options mode, 8 tokens x top-20 logprobs)\n"
    )
    head = (
        f"{'conc':>4} {'reqs':>5} | {'direct p50':>10} {'p99':>7} | {'gateway p50':>11} "
        f"{'p99':>7} | {'added p50':>9} {'p99':>7} | {'rps direct':>10} {'gateway':>8} "
        f"{'ratio':>6} | {'gw CPU/req':>10}"
    )
    print(head)
    print("-" * len(head))
    for c, n, d_lat, d_rps, g_lat, g_rps, cpu_ms in rows:
        d50, d99, g50, g99 = _pct(d_lat, 50), _pct(d_lat, 99), _pct(g_lat, 50), _pct(g_lat, 99)
        print(
            f"{c:>4} {n:>5} | {d50:>8.2f}ms {d99:>5.1f}ms | {g50:>9.2f}ms {g99:>5.1f}ms | "
            f"{g50 - d50:>7.2f}ms {g99 - d99:>5.1f}ms | {d_rps:>10.0f} {g_rps:>8.0f} "
            f"{g_rps / d_rps:>6.2f} | {cpu_ms:>8.2f}ms"
        )


if __name__ == "__main__":
    main()
